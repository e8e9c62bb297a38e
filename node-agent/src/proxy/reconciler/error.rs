//! What can go wrong while writing one frontend. A failure never stops a sync: the
//! reconciler logs it with the Service's name and retries the Service on the next sync.

use crate::proxy::maps;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Map(#[from] maps::Error),
    #[error("no reverse-NAT index left; no room for another frontend")]
    RevNatExhausted,
    #[error("no backend id left")]
    BackendIdsExhausted,
    #[error("{0} ready backends do not fit the {max} slots of a frontend", max = u16::MAX)]
    TooManyBackends(usize),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
