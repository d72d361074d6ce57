//! Writing to stdout without panicking: `println!` panics when stdout is a closed pipe
//! (`ferry sync … | head -2`), turning a finished run into exit 101. What cannot be
//! written (the reader is gone) is dropped; the exit code still says how the run ended.

use std::fmt;
use std::io::Write;

/// Writes `args` to stdout, ignoring a closed or failing stdout.
pub(crate) fn write(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

/// `println!` that never panics on a closed stdout.
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::out::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` that never panics on a closed stdout.
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*)) };
}

pub(crate) use {out, outln};
