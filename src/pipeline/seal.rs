//! The stored object format (docs/FORMAT.md): AES-256-GCM in the STREAM construction
//! (aes-gcm's `stream` support, big-endian 32-bit counter), with a per-object data key
//! wrapped by the repository key.
//!
//! ```text
//! "PGDR" | format u8 = 3 | key id [16] | wrapped data key [60] | nonce prefix [7] | chunk size u32 BE
//! chunk 1 .. chunk N: ciphertext + 16-byte tag, every chunk `chunk size` bytes of
//! plaintext but the last, which is flagged in its nonce and may be shorter (or empty)
//! ```
//!
//! Every chunk is authenticated together with the header and the object's key
//! (its path inside the cluster's area), so a flipped bit, a truncation, a swapped
//! header or an object moved to another name fails to open.

use std::io::{self, Read, Write};

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};

use super::keys::{KEY_ID_LEN, KEY_LEN, KeyId, Keyring, RepoKey};

pub const MAGIC: &[u8; 4] = b"PGDR";
/// Format 1: chunks authenticated with the header and the object's key. Format 2
/// (written in 2026-12 until key rotation came): also with the repository's identity —
/// cluster name and system identifier — so an object copied into another cluster's
/// area, even one that shares the key, fails to open. Format 3 (written since): as 2,
/// but the chunks are authenticated with the header *without* the key id and wrapped
/// data key, so `pgdr key rotate --rewrap` can wrap the data key under a new repository
/// key by rewriting the header alone. All three are read.
pub const FORMAT_V1: u8 = 1;
pub const FORMAT_V2: u8 = 2;
pub const FORMAT: u8 = 3;

/// The object context a sealer authenticates: `cluster NUL system-identifier NUL key`
/// for a bound (format 2) object, the bare key for format 1.
pub fn bound_context(cluster: &str, system_identifier: &str, key: &str) -> String {
    format!("{cluster}\0{system_identifier}\0{key}")
}

fn format_of(object: &str) -> u8 {
    if object.contains('\0') { FORMAT } else { FORMAT_V1 }
}
/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: u32 = 1 << 20;
pub const TAG_LEN: usize = 16;
const WRAP_NONCE_LEN: usize = 12;
pub const WRAPPED_KEY_LEN: usize = WRAP_NONCE_LEN + KEY_LEN + TAG_LEN;
pub const NONCE_PREFIX_LEN: usize = 7;
pub const HEADER_LEN: usize = 4 + 1 + KEY_ID_LEN + WRAPPED_KEY_LEN + NONCE_PREFIX_LEN + 4;
/// Largest accepted chunk size when reading, so a damaged header cannot make us
/// allocate without bound.
const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// Why an object could not be opened. Converted to `io::Error` (InvalidData) inside
/// readers; `describe` gives the user-facing sentence.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("is not a pgdr object (bad magic) or is truncated inside its header")]
    NotPgdr,
    #[error("uses object format {0}, which this pgdr does not know — upgrade pgdr")]
    UnknownFormat(u8),
    #[error(
        "was encrypted with key id {0}, which is neither the repository key nor a retired key pgdr could load — check key_file / PGDR_KEY, and that the retired key is in the key file's .retired/ directory (`pgdr key list`)"
    )]
    UnknownKey(String),
    #[error(
        "names key id {0}, which this repository has never used (repo.json) — the object is damaged or was planted"
    )]
    ForeignKey(String),
    #[error("cannot be opened with the repository key: wrong key, or the header is damaged")]
    Unwrap,
    #[error("failed authentication in chunk {0}: the object was modified, truncated or moved")]
    Chunk(u64),
    #[error("has an invalid chunk size {0}")]
    ChunkSize(u32),
    #[error("is bound to a repository identity, which was not given (read it through the repository)")]
    Unbound,
}

impl From<SealError> for io::Error {
    fn from(e: SealError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Where the key id and wrapped data key sit in the header.
const WRAP_START: usize = 4 + 1;
const WRAP_END: usize = WRAP_START + KEY_ID_LEN + WRAPPED_KEY_LEN;

/// What every chunk is authenticated with: the header (format 3: all but the key id
/// and the wrapped data key, which the wrapping itself authenticates) and the context.
fn header_aad(header: &[u8], object: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + object.len());
    if header[4] == FORMAT {
        aad.extend_from_slice(&header[..WRAP_START]);
        aad.extend_from_slice(&header[WRAP_END..]);
    } else {
        aad.extend_from_slice(header);
    }
    aad.extend_from_slice(object.as_bytes());
    aad
}

/// Unwrap a header's data key with whichever of `keys` its key id names.
fn unwrap_data_key(header: &[u8], keys: &Keyring) -> Result<Vec<u8>, SealError> {
    if header.len() < HEADER_LEN {
        return Err(SealError::NotPgdr);
    }
    let key_id = peek_key_id(header)?;
    let key = keys.get(&key_id).ok_or_else(|| {
        if keys.may_know(&key_id) {
            SealError::UnknownKey(key_id.to_hex())
        } else {
            SealError::ForeignKey(key_id.to_hex())
        }
    })?;
    let at = WRAP_START + KEY_ID_LEN;
    let wrap_nonce = GenericArray::clone_from_slice(&header[at..at + WRAP_NONCE_LEN]);
    let wrapped = &header[at + WRAP_NONCE_LEN..WRAP_END];
    key.cipher()
        .decrypt(
            &wrap_nonce,
            Payload {
                msg: wrapped,
                aad: &header[..WRAP_START + KEY_ID_LEN],
            },
        )
        .map_err(|_| SealError::Unwrap)
}

/// The header of a format-3 object with its data key wrapped under `to` instead: the
/// stored chunks stay valid as they are (they are not bound to the wrapping). `None`
/// for a format-1 or -2 object, whose chunks are bound to the whole header: those are
/// re-encrypted instead (`pipeline::reseal`). The data key is checked to unwrap first.
pub fn rewrap_header(header: &[u8], keys: &Keyring, to: &RepoKey) -> Result<Option<[u8; HEADER_LEN]>, SealError> {
    if header.len() < HEADER_LEN {
        return Err(SealError::NotPgdr);
    }
    peek_key_id(header)?;
    if header[4] != FORMAT {
        return Ok(None);
    }
    let data_key = unwrap_data_key(header, keys)?;
    let mut out = [0u8; HEADER_LEN];
    out[..WRAP_START].copy_from_slice(&header[..WRAP_START]);
    out[WRAP_START..WRAP_START + KEY_ID_LEN].copy_from_slice(&to.id().0);
    let wrap_nonce = Aes256Gcm::generate_nonce(&mut rand::rngs::OsRng);
    let wrapped = to
        .cipher()
        .encrypt(
            &wrap_nonce,
            Payload {
                msg: &data_key,
                aad: &out[..WRAP_START + KEY_ID_LEN],
            },
        )
        .map_err(|_| SealError::Unwrap)?;
    let at = WRAP_START + KEY_ID_LEN;
    out[at..at + WRAP_NONCE_LEN].copy_from_slice(&wrap_nonce);
    out[at + WRAP_NONCE_LEN..WRAP_END].copy_from_slice(&wrapped);
    out[WRAP_END..].copy_from_slice(&header[WRAP_END..HEADER_LEN]);
    Ok(Some(out))
}

/// A new object's header (fresh data key, wrapped by the repository key), its
/// chunk encryptor and the AAD every chunk is authenticated with.
fn begin(key: &RepoKey, object: &str) -> io::Result<(Vec<u8>, EncryptorBE32<Aes256Gcm>, Vec<u8>)> {
    let data_key: [u8; KEY_LEN] = rand::random();
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = rand::random();
    let wrap_nonce = Aes256Gcm::generate_nonce(&mut rand::rngs::OsRng);

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.push(format_of(object));
    header.extend_from_slice(&key.id().0);
    let wrap_aad = header.clone();
    let wrapped = key
        .cipher()
        .encrypt(
            &wrap_nonce,
            Payload {
                msg: &data_key,
                aad: &wrap_aad,
            },
        )
        .map_err(|_| io::Error::other("cannot wrap the data key"))?;
    header.extend_from_slice(&wrap_nonce);
    header.extend_from_slice(&wrapped);
    header.extend_from_slice(&nonce_prefix);
    header.extend_from_slice(&CHUNK_SIZE.to_be_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);

    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key));
    let encryptor = EncryptorBE32::from_aead(cipher, GenericArray::from_slice(&nonce_prefix));
    let aad = header_aad(&header, object);
    Ok((header, encryptor, aad))
}

/// Encrypting writer: plaintext in, the stored format out to `inner`.
pub struct Sealer<W: Write> {
    inner: W,
    encryptor: Option<EncryptorBE32<Aes256Gcm>>,
    aad: Vec<u8>,
    buf: Vec<u8>,
    chunk: usize,
}

impl<W: Write> Sealer<W> {
    /// Start an object named `object` (its key, for the AAD); writes the header.
    pub fn new(mut inner: W, key: &RepoKey, object: &str) -> io::Result<Self> {
        let (header, encryptor, aad) = begin(key, object)?;
        inner.write_all(&header)?;
        Ok(Sealer {
            inner,
            encryptor: Some(encryptor),
            aad,
            // Allocated on the first write.
            buf: Vec::new(),
            chunk: CHUNK_SIZE as usize,
        })
    }

    /// Seal what `buf` holds (a full chunk, or the rest at the end) in place, write
    /// it, and empty `buf` for the next one — one buffer for the whole object.
    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let failed = || io::Error::other("encryption failed");
        if last {
            let enc = self.encryptor.take().ok_or_else(failed)?;
            enc.encrypt_last_in_place(&self.aad, &mut self.buf)
                .map_err(|_| failed())?;
        } else {
            let enc = self.encryptor.as_mut().ok_or_else(failed)?;
            enc.encrypt_next_in_place(&self.aad, &mut self.buf)
                .map_err(|_| failed())?;
        }
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Seal the last chunk and hand back the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.chunk + TAG_LEN);
        }
        while !rest.is_empty() {
            // A full chunk is sealed only once more data arrives: only `finish` knows
            // which chunk is the last.
            if self.buf.len() == self.chunk {
                self.seal_chunk(false)?;
            }
            let take = (self.chunk - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Seal a whole object held in memory: the same bytes a `Sealer` writes (full chunks,
/// then a last chunk of 1..=CHUNK_SIZE bytes, or empty for an empty object), built in
/// one buffer with each chunk copied once and encrypted where it lies.
pub fn seal_slice(plain: &[u8], key: &RepoKey, object: &str) -> io::Result<Vec<u8>> {
    let (header, mut encryptor, aad) = begin(key, object)?;
    let chunk = CHUNK_SIZE as usize;
    let count = plain.len().div_ceil(chunk).max(1);
    let (body, last) = plain.split_at(chunk * (count - 1));
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + count * TAG_LEN);
    out.extend_from_slice(&header);
    let failed = |_| io::Error::other("encryption failed");
    for piece in body.chunks(chunk) {
        encryptor
            .encrypt_next_in_place(&aad, &mut Tail::append(&mut out, piece))
            .map_err(failed)?;
    }
    encryptor
        .encrypt_last_in_place(&aad, &mut Tail::append(&mut out, last))
        .map_err(failed)?;
    Ok(out)
}

/// The end of a vector, from `start` on, as the buffer an AEAD encrypts in place
/// (it appends the tag).
struct Tail<'a> {
    vec: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Tail<'a> {
    /// Append `piece` to `vec` and stand for it.
    fn append(vec: &'a mut Vec<u8>, piece: &[u8]) -> Tail<'a> {
        let start = vec.len();
        vec.extend_from_slice(piece);
        Tail { vec, start }
    }
}

impl AsRef<[u8]> for Tail<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.vec[self.start..]
    }
}

impl AsMut<[u8]> for Tail<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..]
    }
}

impl aes_gcm::aead::Buffer for Tail<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aes_gcm::aead::Result<()> {
        self.vec.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.vec.truncate(self.start + len);
    }
}

/// Read just the header's key id, without decrypting anything.
pub fn peek_key_id(header: &[u8]) -> Result<KeyId, SealError> {
    if header.len() < 4 + 1 + KEY_ID_LEN || &header[..4] != MAGIC {
        return Err(SealError::NotPgdr);
    }
    if !matches!(header[4], FORMAT_V1 | FORMAT_V2 | FORMAT) {
        return Err(SealError::UnknownFormat(header[4]));
    }
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&header[5..5 + KEY_ID_LEN]);
    Ok(KeyId(id))
}

/// What a format-`format` object was authenticated with, given the reader's context.
fn opened_context(format: u8, object: &str) -> io::Result<String> {
    if format == FORMAT_V1 {
        // Written before objects were bound: only the key.
        return Ok(object.rsplit('\0').next().unwrap_or(object).to_string());
    }
    if !object.contains('\0') {
        return Err(SealError::Unbound.into());
    }
    Ok(object.to_string())
}

/// Decrypting reader: the stored format in, plaintext out.
pub struct Opener<R: Read> {
    inner: R,
    decryptor: Option<DecryptorBE32<Aes256Gcm>>,
    aad: Vec<u8>,
    chunk: usize,
    /// Ciphertext read but not yet opened (one chunk plus a look-ahead byte).
    pending: Vec<u8>,
    /// Opened plaintext not yet handed out.
    out: Vec<u8>,
    out_pos: usize,
    chunk_no: u64,
    done: bool,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> Opener<R> {
    /// Read and check the header, unwrap the data key. Fails before any plaintext.
    pub fn new(mut inner: R, keys: &Keyring, object: &str) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        if read_full(&mut inner, &mut header)? < HEADER_LEN {
            return Err(SealError::NotPgdr.into());
        }
        let data_key = unwrap_data_key(&header, keys)?;
        let mut at = WRAP_END;
        let nonce_prefix = &header[at..at + NONCE_PREFIX_LEN];
        at += NONCE_PREFIX_LEN;
        let chunk = u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        if chunk == 0 || chunk > MAX_CHUNK_SIZE {
            return Err(SealError::ChunkSize(chunk).into());
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&data_key));
        Ok(Opener {
            inner,
            decryptor: Some(DecryptorBE32::from_aead(cipher, GenericArray::from_slice(nonce_prefix))),
            aad: header_aad(&header, &opened_context(header[4], object)?),
            chunk: chunk as usize,
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            chunk_no: 0,
            done: false,
        })
    }

    /// Open the next chunk into `out`. Returns false at the end of the object.
    fn open_next(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let sealed = self.chunk + TAG_LEN;
        // Fill one sealed chunk plus one byte, to learn whether this chunk is the last.
        let want = sealed + 1;
        // Buffers are reused: `pending` becomes the plaintext in place, and the old
        // plaintext buffer takes the next ciphertext (no allocation per chunk).
        let mut chunk = std::mem::take(&mut self.out);
        chunk.clear();
        chunk.extend_from_slice(&self.pending);
        self.pending.clear();
        if chunk.len() < want {
            let have = chunk.len();
            chunk.resize(want, 0);
            let got = read_full(&mut self.inner, &mut chunk[have..])?;
            chunk.truncate(have + got);
        }
        self.chunk_no += 1;
        let last = chunk.len() <= sealed;
        if !last {
            // Keep the look-ahead byte for the next chunk.
            self.pending.extend_from_slice(&chunk[sealed..]);
            chunk.truncate(sealed);
        }
        let bad = SealError::Chunk(self.chunk_no);
        if last {
            let dec = self.decryptor.take().ok_or(SealError::Chunk(self.chunk_no))?;
            dec.decrypt_last_in_place(&self.aad, &mut chunk).map_err(|_| bad)?;
            self.done = true;
        } else {
            let dec = self.decryptor.as_mut().ok_or(SealError::Chunk(self.chunk_no))?;
            dec.decrypt_next_in_place(&self.aad, &mut chunk).map_err(|_| bad)?;
        }
        self.out = chunk;
        self.out_pos = 0;
        Ok(true)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out.len() {
            if !self.open_next()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// The `SealError` inside an I/O error, if that is what it is.
pub fn seal_error(err: &io::Error) -> Option<&SealError> {
    err.get_ref().and_then(|e| e.downcast_ref::<SealError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(RepoKey::from_bytes(&[7u8; 32]))
    }

    fn seal(data: &[u8], keys: &Keyring, name: &str) -> Vec<u8> {
        let mut s = Sealer::new(Vec::new(), keys.primary(), name).unwrap();
        // Write in odd-sized pieces to exercise chunk boundaries.
        for piece in data.chunks(333_333) {
            s.write_all(piece).unwrap();
        }
        s.finish().unwrap()
    }

    fn open(stored: &[u8], keys: &Keyring, name: &str) -> io::Result<Vec<u8>> {
        let mut o = Opener::new(stored, keys, name)?;
        let mut out = Vec::new();
        o.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn sealing_a_slice_opens_like_a_stream() {
        let keys = keyring();
        let c = CHUNK_SIZE as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal_slice(&data, keys.primary(), "wal/x").unwrap();
            assert_eq!(sealed.len(), seal(&data, &keys, "wal/x").len(), "len {len}");
            assert_eq!(open(&sealed, &keys, "wal/x").unwrap(), data, "len {len}");
            assert!(open(&sealed, &keys, "wal/y").is_err());
        }
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let keys = keyring();
        let c = CHUNK_SIZE as usize;
        for len in [0, 1, c - 1, c, c + 1, 2 * c, 2 * c + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let stored = seal(&data, &keys, "a/b");
            assert_eq!(open(&stored, &keys, "a/b").unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn flipped_byte_anywhere_fails() {
        let keys = keyring();
        let data = vec![42u8; CHUNK_SIZE as usize + 1000];
        let stored = seal(&data, &keys, "x");
        for pos in [
            0,
            4,
            5,
            30,
            HEADER_LEN - 1,
            HEADER_LEN,
            HEADER_LEN + 500,
            stored.len() - 1,
        ] {
            let mut bad = stored.clone();
            bad[pos] ^= 0x01;
            assert!(open(&bad, &keys, "x").is_err(), "flip at {pos} went unnoticed");
        }
    }

    #[test]
    fn truncation_fails_even_at_chunk_boundary() {
        let keys = keyring();
        let data = vec![1u8; 2 * CHUNK_SIZE as usize + 10];
        let stored = seal(&data, &keys, "x");
        let boundary = HEADER_LEN + CHUNK_SIZE as usize + TAG_LEN;
        for len in [0, 10, HEADER_LEN, boundary, boundary + 1, stored.len() - 1] {
            assert!(
                open(&stored[..len], &keys, "x").is_err(),
                "truncation to {len} went unnoticed"
            );
        }
    }

    #[test]
    fn wrong_key_and_moved_object_fail() {
        let keys = keyring();
        let stored = seal(b"hello", &keys, "x");
        let other = Keyring::new(RepoKey::from_bytes(&[8u8; 32]));
        let err = open(&stored, &other, "x").unwrap_err();
        assert!(matches!(seal_error(&err), Some(SealError::UnknownKey(_))));
        assert!(open(&stored, &keys, "y").is_err());
    }

    /// Format 3: a new header with the data key wrapped under another key opens with
    /// that key alone, the chunks untouched; every header byte is still authenticated.
    #[test]
    fn rewrapped_header_opens_under_the_new_key_only() {
        let old = keyring();
        let new_key = RepoKey::from_bytes(&[9u8; 32]);
        let name = "main\x001234\x00backups/x/manifest.json";
        let data: Vec<u8> = (0..CHUNK_SIZE as usize + 77).map(|i| (i % 13) as u8).collect();
        let stored = seal(&data, &old, name);
        assert_eq!(stored[4], FORMAT);
        let header = rewrap_header(&stored[..HEADER_LEN], &old, &new_key).unwrap().unwrap();
        let mut moved = header.to_vec();
        moved.extend_from_slice(&stored[HEADER_LEN..]);
        let new_only = Keyring::new(new_key.clone());
        assert_eq!(open(&moved, &new_only, name).unwrap(), data);
        let err = open(&moved, &old, name).unwrap_err();
        assert!(matches!(seal_error(&err), Some(SealError::UnknownKey(_))), "{err}");
        for pos in [0, 4, 5, 21, 40, 80, 81, 87, 91, HEADER_LEN + 3] {
            let mut bad = moved.clone();
            bad[pos] ^= 0x01;
            assert!(open(&bad, &new_only, name).is_err(), "flip at {pos} went unnoticed");
        }
        // Without the old key the data key cannot be unwrapped, so nothing is rewrapped.
        assert!(rewrap_header(&stored[..HEADER_LEN], &new_only, &new_key).is_err());
        // Format 1 (unbound) objects are re-encrypted instead.
        let v1 = seal(b"old", &old, "x");
        assert!(rewrap_header(&v1[..HEADER_LEN], &old, &new_key).unwrap().is_none());
    }

    #[test]
    fn plaintext_does_not_appear() {
        let keys = keyring();
        let marker = b"VERY-SECRET-MARKER-0123456789";
        let stored = seal(&marker.repeat(1000), &keys, "x");
        assert!(!stored.windows(marker.len()).any(|w| w == marker));
    }
}
