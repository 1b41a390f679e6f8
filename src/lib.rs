pub mod cli;
pub mod key;
pub mod local_match;
pub mod normalize;
pub mod optout;
pub mod psi;
pub mod records;
pub mod synth;
pub mod token;
pub mod wire {
    tonic::include_proto!("idmatch.v1");
}
