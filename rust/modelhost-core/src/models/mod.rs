//! Models: one file or folder per architecture.
pub mod bert;
