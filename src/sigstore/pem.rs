//! Go 1.26's `encoding/pem.Decode`, byte for byte: what counts as a block decides which
//! key containers/image uses (the first block that decodes; text before `-----BEGIN` and
//! blocks that fail are skipped; headers allowed; the base64 body may hold spaces, tabs
//! and line breaks and non-zero trailing bits).

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub label: String,
    pub bytes: Vec<u8>,
    pub has_headers: bool,
}

const PEM_START: &[u8] = b"\n-----BEGIN ";
const PEM_END: &[u8] = b"\n-----END ";
const PEM_END_OF_LINE: &[u8] = b"-----";

/// The first block that decodes and what follows it, or `None`.
pub fn decode(data: &[u8]) -> Option<(Block, &[u8])> {
    let mut rest = data;
    let mut end_trailer_index: isize = 0;
    loop {
        if end_trailer_index < 0 || end_trailer_index as usize > rest.len() {
            return None;
        }
        rest = &rest[end_trailer_index as usize..];
        let mut end_index = find(rest, PEM_END)? as isize;
        end_trailer_index = end_index + PEM_END.len() as isize;
        let Some(begin) = rfind(&rest[..end_index as usize], &PEM_START[1..]) else {
            continue;
        };
        if begin > 0 && rest[begin - 1] != b'\n' {
            continue;
        }
        let skip = (begin + PEM_START.len() - 1) as isize;
        rest = &rest[skip as usize..];
        end_index -= skip;
        end_trailer_index -= skip;

        let (type_line, next, consumed) = get_line(rest);
        rest = next;
        end_index -= consumed as isize;
        end_trailer_index -= consumed as isize;
        let Some(label) = type_line.strip_suffix(PEM_END_OF_LINE) else {
            continue;
        };

        let mut has_headers = false;
        loop {
            if rest.is_empty() {
                return None;
            }
            let (line, next, consumed) = get_line(rest);
            if !line.contains(&b':') {
                break;
            }
            has_headers = true;
            rest = next;
            end_index -= consumed as isize;
            end_trailer_index -= consumed as isize;
        }
        if has_headers && end_index < 0 {
            continue;
        }
        if end_trailer_index < 0 || end_trailer_index as usize > rest.len() {
            continue;
        }
        let end_trailer = &rest[end_trailer_index as usize..];
        let trailer_len = label.len() + PEM_END_OF_LINE.len();
        if end_trailer.len() < trailer_len {
            continue;
        }
        let (trailer, rest_of_end_line) = end_trailer.split_at(trailer_len);
        if !trailer.starts_with(label) || !trailer.ends_with(PEM_END_OF_LINE) {
            continue;
        }
        if !get_line(rest_of_end_line).0.is_empty() {
            continue;
        }
        let mut bytes = Vec::new();
        if end_index > 0 {
            let body: Vec<u8> = rest[..end_index as usize]
                .iter()
                .copied()
                .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .collect();
            match cip_core::policy::decode_b64(&String::from_utf8_lossy(&body)) {
                Ok(decoded) if body.is_ascii() => bytes = decoded,
                _ => continue,
            }
        }
        let after = &rest[(end_index + PEM_END.len() as isize - 1) as usize..];
        let (_, rest, _) = get_line(after);
        return Some((
            Block {
                label: String::from_utf8_lossy(label).into_owned(),
                bytes,
                has_headers,
            },
            rest,
        ));
    }
}

/// Go's `getLine`: up to `\n` (a `\r` before it dropped), trailing spaces and tabs trimmed.
fn get_line(data: &[u8]) -> (&[u8], &[u8], usize) {
    let (mut i, j) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (i, i + 1),
        None => (data.len(), data.len()),
    };
    if j > i && i > 0 && data[i - 1] == b'\r' {
        i -= 1;
    }
    let mut line = &data[..i];
    while let [head @ .., b' ' | b'\t'] = line {
        line = head;
    }
    (line, &data[j..], j)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE";

    fn block(text: &str) -> Option<Block> {
        decode(text.as_bytes()).map(|(b, _)| b)
    }

    #[test]
    fn blocks_as_go_finds_them() {
        let plain = format!("-----BEGIN PUBLIC KEY-----\n{BODY}\n-----END PUBLIC KEY-----\n");
        assert_eq!(block(&plain).unwrap().label, "PUBLIC KEY");
        // Text before the block, CRLF line ends, spaces inside the body.
        let noisy = format!(
            "comment\r\n-----BEGIN PUBLIC KEY-----\r\n{} {}\r\n-----END PUBLIC KEY-----\r\n",
            &BODY[..8],
            &BODY[8..]
        );
        assert_eq!(block(&noisy).unwrap().bytes, block(&plain).unwrap().bytes);
        // BEGIN not at a line start is not a block.
        assert!(block(&format!("x{plain}")).is_none());
        // A mismatched END label makes the block fail; a later good one is found.
        let bad = format!("-----BEGIN A-----\n{BODY}\n-----END B-----\n{plain}");
        assert_eq!(block(&bad).unwrap().label, "PUBLIC KEY");
        // Body that does not decode: skipped.
        let broken = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
        assert!(block(broken).is_none());
        // Headers.
        let headers = format!(
            "-----BEGIN PUBLIC KEY-----\nProc-Type: 4\n\n{BODY}\n-----END PUBLIC KEY-----\n"
        );
        assert!(block(&headers).unwrap().has_headers);
        // Trailing text on the END line.
        let trailing = format!("-----BEGIN PUBLIC KEY-----\n{BODY}\n-----END PUBLIC KEY-----x\n");
        assert!(block(&trailing).is_none());
        // Non-zero trailing bits are accepted, as Go's StdEncoding does.
        let bits = "-----BEGIN K-----\nAB==\n-----END K-----\n";
        assert_eq!(block(bits).unwrap().bytes, vec![0]);
        // Empty body.
        assert_eq!(
            block("-----BEGIN K-----\n-----END K-----\n").unwrap().bytes,
            Vec::<u8>::new()
        );
    }

    #[test]
    fn rest_after_a_block() {
        let two = format!(
            "-----BEGIN A-----\n{BODY}\n-----END A-----\n-----BEGIN B-----\n{BODY}\n-----END B-----\n"
        );
        let (first, rest) = decode(two.as_bytes()).unwrap();
        assert_eq!(first.label, "A");
        assert_eq!(decode(rest).unwrap().0.label, "B");
    }
}
