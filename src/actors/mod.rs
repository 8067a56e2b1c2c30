//! Layer 4: the actors. Each imports the mail layer's messages and handles
//! (`crate::mail`), never another actor; startup wires them together.

pub mod boards;
pub mod capture;
pub mod db;
pub mod listener;
pub mod presence;
pub mod pruner;
pub mod relay;
pub mod room;
