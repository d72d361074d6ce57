//! ferry-source
