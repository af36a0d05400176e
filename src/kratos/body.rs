//! Reading a response body with a cap, so that no answer (a broken proxy, a huge page, a
//! hostile server) can take more memory than the configured
//! [`max_response_bytes`](super::ClientConfig::max_response_bytes). A `Content-Length` above the
//! cap is refused before any of the body is read; a body without one (chunked) is read in chunks
//! and dropped as soon as it passes the cap.

/// The default cap: it fits a page of 500 identities with large traits, yet bounds memory well
/// under the chart's 256 MiB limit.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The most memory reserved up front for a body, whatever its `Content-Length` announces; the
/// buffer grows as the body arrives.
const MAX_PREALLOCATION: usize = 1024 * 1024;

/// A body larger than the cap. Says how large it claimed or grew to be, never what it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TooLarge {
    /// The `Content-Length` announced more than the cap; nothing was read.
    #[error(
        "the response announces {announced} bytes, more than the cap of {} (max_response_bytes); body not read",
        describe_cap(*cap)
    )]
    Announced {
        /// The cap in bytes.
        cap: usize,
        /// The announced length.
        announced: u64,
    },
    /// The body grew past the cap while being read; reading stopped there.
    #[error(
        "the response body exceeds the cap of {} (max_response_bytes); reading stopped",
        describe_cap(*cap)
    )]
    Streamed {
        /// The cap in bytes.
        cap: usize,
    },
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// It is larger than the cap.
    TooLarge(TooLarge),
    /// The connection failed or timed out while reading.
    Transport(reqwest::Error),
}

/// Reads the body of `response`, at most `cap` bytes of it.
pub(crate) async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, ReadFailure> {
    let announced = response.content_length();
    if let Some(announced) = announced
        && announced > u64::try_from(cap).unwrap_or(u64::MAX)
    {
        return Err(ReadFailure::TooLarge(TooLarge::Announced {
            cap,
            announced,
        }));
    }
    let reserve = announced
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(cap)
        .min(MAX_PREALLOCATION);
    let mut body = Vec::with_capacity(reserve);
    while let Some(chunk) = response.chunk().await.map_err(ReadFailure::Transport)? {
        if chunk.len() > cap - body.len() {
            return Err(ReadFailure::TooLarge(TooLarge::Streamed { cap }));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `cap` in bytes, and in KiB or MiB when it is a whole number of them.
fn describe_cap(cap: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if cap >= MIB && cap.is_multiple_of(MIB) {
        format!("{cap} bytes ({} MiB)", cap / MIB)
    } else if cap >= KIB && cap.is_multiple_of(KIB) {
        format!("{cap} bytes ({} KiB)", cap / KIB)
    } else {
        format!("{cap} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cap() {
        assert_eq!(
            TooLarge::Announced {
                cap: DEFAULT_MAX_RESPONSE_BYTES,
                announced: 100_000_000
            }
            .to_string(),
            "the response announces 100000000 bytes, more than the cap of 67108864 bytes (64 MiB) \
             (max_response_bytes); body not read"
        );
        assert_eq!(
            TooLarge::Streamed { cap: 1536 }.to_string(),
            "the response body exceeds the cap of 1536 bytes (max_response_bytes); reading stopped"
        );
        assert_eq!(describe_cap(2048), "2048 bytes (2 KiB)");
    }
}
