//! ferry-resp
