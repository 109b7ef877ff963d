//! Arbitrary text for property tests of every parser that reads what users write: a seeded,
//! reproducible mix of plain noise and fragments that parsers trip on (huge numbers, units,
//! separators, address shapes, multi-byte characters).

/// Pieces that tend to reach the corners of a parser.
const FRAGMENTS: &[&str] = &[
    "0",
    "1",
    "99999999999999999999",
    "18446744073709551616",
    "4294967296",
    "65536",
    "-1",
    "+",
    ".",
    "..",
    "h",
    "m",
    "s",
    "ms",
    "µs",
    "ns",
    "e9",
    ":",
    "::",
    "/",
    "/129",
    "-",
    ",",
    "large:",
    "0x",
    "10.0.0.",
    "255.255.255.255",
    "2001:db8::",
    "::ffff:",
    "%eth0",
    "[",
    "]",
    "=",
    "!",
    " ",
    "\t",
    "\n",
    "\u{0}",
    "é",
    "\u{202e}",
    "🙂",
    "a",
    "Z",
    "_",
    "*",
    "'",
    "\"",
    "\\",
];

/// `n` strings from `seed`: about half built from fragments, the rest printable noise.
pub fn strings(seed: u64, n: usize) -> Vec<String> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..n)
        .map(|_| {
            let pieces = (next() % 7) as usize;
            let mut s = String::new();
            for _ in 0..pieces {
                if next() % 2 == 0 {
                    s.push_str(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
                } else {
                    let c = char::from_u32((next() % 95) as u32 + 32).unwrap_or('?');
                    s.push(c);
                }
            }
            s
        })
        .collect()
}
