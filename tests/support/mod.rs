pub mod gateway;
pub mod redis;
