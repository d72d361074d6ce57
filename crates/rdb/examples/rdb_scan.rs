//! Parses an RDB file and prints counts and throughput:
//! `cargo run --release -p ferry-rdb --example rdb_scan -- dump.rdb [--decode]`.

use std::time::Instant;

use ferry_rdb::{decode_value_in, Item, Parser};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: rdb_scan <file> [--decode]")?;
    let decode = args.next().as_deref() == Some("--decode");
    let start = Instant::now();
    let mut p = Parser::new(std::fs::File::open(path)?);
    let (mut entries, mut others, mut payload_bytes) = (0u64, 0u64, 0u64);
    while let Some(item) = p.next_item()? {
        match item {
            Item::Entry(e) => {
                entries += 1;
                payload_bytes += e.payload.len() as u64;
                if decode {
                    decode_value_in(p.dialect(), e.value_type, &e.payload)?;
                }
            }
            _ => others += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = p.offset() as f64 / 1e6;
    println!(
        "version {:?}: {entries} entries, {others} other items, {payload_bytes} payload bytes, \
         {mb:.1} MB in {secs:.2}s = {:.0} MB/s",
        p.rdb_version(),
        mb / secs
    );
    Ok(())
}
