pub mod env;
pub mod lookup;
pub mod resources;
pub mod volumes;
