pub mod gateway;
pub mod redis;
pub mod redis_cluster;
pub mod redis_sentinel;
pub mod worlds;
