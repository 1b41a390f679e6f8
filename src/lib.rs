pub mod cli;
pub mod key;
pub mod normalize;
pub mod records;
pub mod synth;
pub mod token;
pub mod wire {
    tonic::include_proto!("idmatch.v1");
}
