//! ferry-target
