pub mod normalize;
pub mod wire {
    tonic::include_proto!("idmatch.v1");
}
