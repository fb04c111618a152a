pub mod gateway;
pub mod redis;
pub mod redis_cluster;
pub mod worlds;
