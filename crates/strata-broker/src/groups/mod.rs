//! Consumer groups: the membership protocol ([`coordinator`]) and committed offsets
//! ([`offsets`]).

pub(crate) mod coordinator;
pub(crate) mod offsets;

#[cfg(test)]
pub(crate) mod tests;
