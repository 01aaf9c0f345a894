//! modelhost-server: the HTTP face of a modelhost host — OpenAI-compatible routes, LM Studio's REST routes and
//! modelhost's own lifecycle API (docs/http-api.md) — over the same instance table as the in-process clients.
//!
//! `config` says how to serve, `server` assembles the routes and runs them, `openai` / `lmstudio` /
//! `lifecycle` are the route families, `run` keeps model work on blocking threads, `extract` checks bodies,
//! hosts and tokens, `error` renders errors, `lms_config` reads LM Studio's config dicts.
#![deny(missing_docs)]

pub mod config;
mod error;
mod extract;
mod lifecycle;
mod lms_config;
mod lmstudio;
mod openai;
mod run;
mod server;
mod state;

pub use config::{resolve_api_token, ServerConfig};
pub use error::ApiError;
pub use server::RunningServer;
