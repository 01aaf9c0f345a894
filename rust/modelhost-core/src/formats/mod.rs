//! Model file formats: parsers that turn a file's bytes (normally its memory map) into a validated header,
//! and small writers the tests use to make files.
//!
//! A parser here reads bytes and nothing else: it checks every count, length, shape and offset against the
//! bytes that are really there before it allocates, and names the file in its errors. Mapping the file, and
//! reading tensor data, is `storage`'s and the models' business.

pub mod gguf;
pub mod gguf_writer;
pub mod safetensors;
pub mod safetensors_writer;
