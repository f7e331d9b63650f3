//! WeChat's message encryption (WXBizMsgCrypt), used by every push WeChat sends: official accounts'
//! messages and events, WeCom's callbacks and the open platform's verify tickets and
//! authorization events.
//!
//! A push is `POST URL?timestamp=T&nonce=N&encrypt_type=aes&msg_signature=S` with a body
//! `<xml><ToUserName>…</ToUserName><Encrypt>BASE64</Encrypt></xml>` (the open platform's carries
//! `<AppId>` instead of `<ToUserName>`):
//! - `S` is the SHA-1, in lower-case hex, of the token, `T`, `N` and `BASE64` sorted as bytes and
//!   concatenated ([`MsgCrypt::signature`]);
//! - `BASE64` is AES-256-CBC under the key `base64(EncodingAESKey + "=")` with the key's first 16
//!   bytes as IV, over `16 random bytes ‖ message length (4 bytes, big-endian) ‖ message ‖
//!   receive id`, PKCS#7-padded to a multiple of 32 bytes;
//! - the receive id is the appid (official account), the corpid (WeCom) or the component appid
//!   (open platform), and must be the one the [`MsgCrypt`] was built with.
//!
//! [`MsgCrypt::open`] checks the signature before anything else, in constant time, so nothing of
//! the decryption (padding, lengths) is observable to a sender who cannot sign; there is no public
//! way to decrypt without it. [`MsgCrypt::seal`] encrypts and signs a reply. [`Envelope`] and
//! [`XmlFields`] read the outer and inner XML: bounded in size and node count, without DTDs,
//! without entities other than XML's five and character references, never fetching anything.
//! `wetoken_core::msgcrypt` re-exports all of it and adds `ComponentPush`, which reads the open
//! platform's pushes into the engine's types.
//!
//! This crate stands alone (no database, no HTTP) so that the mock WeChat (`wetoken-mock`) can
//! encrypt the pushes it sends with the very code wetoken decrypts them with, without depending
//! on the engine.
//!
//! Nothing here panics on any input, and no error message carries a key, a token, a ticket or the
//! message itself.

use std::fmt;

use aes::Aes256;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use rand::RngCore;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

mod xml;

pub use xml::{Envelope, MAX_CODE, XmlFields};

#[cfg(test)]
mod tests;

/// The largest push body, and the largest `Encrypt` text, accepted: 256 KiB. WeChat's pushes are
/// a few KiB at most.
pub const MAX_ENCRYPTED: usize = 256 * 1024;
/// The largest message [`MsgCrypt::seal`] encrypts: 128 KiB.
pub const MAX_MESSAGE: usize = 128 * 1024;
/// The most XML nodes (elements, texts, comments…) one document may have.
pub const MAX_XML_NODES: u32 = 4096;

/// WeChat pads to multiples of 32 bytes, not AES's 16.
const PAD_BLOCK: usize = 32;
const AES_BLOCK: usize = 16;
const PREFIX_LEN: usize = 16;
const LENGTH_LEN: usize = 4;
const EAK_LEN: usize = 43;
const MAX_TOKEN: usize = 32;
const MAX_TIMESTAMP: usize = 20;
const MAX_NONCE: usize = 64;

/// Why a push, a key or a message was refused. Messages never contain the key, the token or the
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgCryptError {
    /// The EncodingAESKey is not 43 characters of the base64 alphabet.
    #[error(
        "the EncodingAESKey must be 43 characters of the base64 alphabet (A-Z, a-z, 0-9, '+', '/')"
    )]
    InvalidAesKey,
    /// The message token is not 1 to 32 ASCII letters or digits.
    #[error("the message token must be 1 to 32 ASCII letters or digits")]
    InvalidToken,
    /// The receive id is not an appid, component appid or corpid.
    #[error(
        "the receive id (appid, component appid or corpid) must be 1 to 64 letters, digits, '_', '-' or inner '.'"
    )]
    InvalidReceiveId,
    /// A query parameter (`timestamp`, `nonce`) is missing or malformed.
    #[error(
        "the {0} parameter is missing or malformed: timestamp is up to 20 digits, nonce up to 64 printable ASCII characters"
    )]
    BadParameter(&'static str),
    /// `msg_signature` does not match the message: it was forged, altered, or signed with another
    /// token.
    #[error("the message signature does not match")]
    BadSignature,
    /// The encrypted message is not standard base64.
    #[error("the encrypted message is not valid base64")]
    BadBase64,
    /// The ciphertext or the decrypted layout has an impossible length.
    #[error("the encrypted message has an impossible length")]
    BadLength,
    /// The decrypted message does not end in WeChat's PKCS#7 padding.
    #[error("the decrypted message has invalid padding")]
    BadPadding,
    /// The message was encrypted for another appid, component appid or corpid.
    #[error("the message is addressed to another receive id")]
    WrongReceiveId,
    /// The message or the body is not UTF-8.
    #[error("the message is not UTF-8")]
    NotUtf8,
    /// The XML is not what WeChat sends; the text says why (never quoting the input).
    #[error("the XML is refused: {0}")]
    BadXml(String),
    /// The input is larger than the limit.
    #[error("the message is larger than {max} bytes")]
    Oversized {
        /// The limit, in bytes.
        max: usize,
    },
    /// The XML lacks an element that this push must have.
    #[error("the XML lacks the {0} element")]
    MissingField(&'static str),
    /// An element's text is not what it must be (a number, an appid…).
    #[error("the XML's {0} element is malformed")]
    BadField(&'static str),
}

type Result<T, E = MsgCryptError> = std::result::Result<T, E>;

/// One receiver's WXBizMsgCrypt: its message token, its EncodingAESKey and its receive id.
///
/// `Debug` shows the receive id only.
#[derive(Clone)]
pub struct MsgCrypt {
    token: String,
    cipher: Aes256,
    iv: aes::Block,
    receive_id: String,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgCrypt(receive id {})", self.receive_id)
    }
}

/// An encrypted and signed reply: what [`Sealed::to_xml`] puts in the reply envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The ciphertext, in standard base64.
    pub encrypt: String,
    /// The signature over the token, timestamp, nonce and ciphertext.
    pub msg_signature: String,
    /// The timestamp signed.
    pub timestamp: String,
    /// The nonce signed.
    pub nonce: String,
}

impl Sealed {
    /// The reply envelope:
    /// `<xml><Encrypt>…</Encrypt><MsgSignature>…</MsgSignature><TimeStamp>…</TimeStamp><Nonce>…</Nonce></xml>`.
    /// Every value is base64, hex, digits or a checked nonce, so none can break out of its CDATA.
    pub fn to_xml(&self) -> String {
        format!(
            "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[{}]]></MsgSignature>\
             <TimeStamp>{}</TimeStamp><Nonce><![CDATA[{}]]></Nonce></xml>",
            self.encrypt, self.msg_signature, self.timestamp, self.nonce
        )
    }
}

/// A message decrypted, with the random prefix it was encrypted with.
#[derive(Debug, PartialEq, Eq)]
struct Plain {
    prefix: [u8; PREFIX_LEN],
    message: String,
}

impl MsgCrypt {
    /// A receiver's crypt from its message token, its 43-character EncodingAESKey and its receive
    /// id (the appid, component appid or corpid that its pushes must name).
    pub fn new(token: &str, encoding_aes_key: &str, receive_id: &str) -> Result<Self> {
        check_token(token)?;
        let key = decode_aes_key(encoding_aes_key)?;
        if !is_valid_id(receive_id) {
            return Err(MsgCryptError::InvalidReceiveId);
        }
        let cipher = Aes256::new_from_slice(&key).map_err(|_| MsgCryptError::InvalidAesKey)?;
        let mut iv = aes::Block::default();
        iv.copy_from_slice(&key[..AES_BLOCK]);
        Ok(Self {
            token: token.to_owned(),
            cipher,
            iv,
            receive_id: receive_id.to_owned(),
        })
    }

    /// The receive id every message must name.
    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// The signature of `encrypted` with `timestamp` and `nonce`: SHA-1 over the token and the
    /// three, sorted as bytes and concatenated, in lower-case hex.
    pub fn signature(&self, timestamp: &str, nonce: &str, encrypted: &str) -> String {
        sorted_sha1_hex(&[&self.token, timestamp, nonce, encrypted])
    }

    /// Checks `msg_signature` against `encrypted`, `timestamp` and `nonce`, in constant time.
    /// A signature in upper-case hex is accepted.
    pub fn verify(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<()> {
        check_timestamp(timestamp)?;
        check_nonce(nonce)?;
        if encrypted.len() > MAX_ENCRYPTED {
            return Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED });
        }
        let given = msg_signature.to_ascii_lowercase();
        let expected = self.signature(timestamp, nonce, encrypted);
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(MsgCryptError::BadSignature)
        }
    }

    /// Verifies `msg_signature`, then decrypts `encrypted` and checks its receive id: the
    /// message, or why it was refused. This is also the URL check: `encrypted` is the `echostr`,
    /// and the answer is the message.
    pub fn open(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypted: &str,
    ) -> Result<String> {
        self.verify(msg_signature, timestamp, nonce, encrypted)?;
        Ok(self.decrypt(encrypted)?.message)
    }

    /// A push as it arrives: parses the `body` envelope, verifies its `Encrypt` against
    /// `msg_signature`, decrypts it, checks the receive id and parses the inner XML.
    pub fn open_envelope(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        body: &[u8],
    ) -> Result<XmlFields> {
        let envelope = Envelope::parse(body)?;
        let message = self.open(msg_signature, timestamp, nonce, &envelope.encrypt)?;
        XmlFields::parse(&message)
    }

    /// Encrypts `message` with a random prefix and signs it with `timestamp` and `nonce`.
    pub fn seal(&self, message: &str, timestamp: i64, nonce: &str) -> Result<Sealed> {
        let mut prefix = [0u8; PREFIX_LEN];
        rand::rng().fill_bytes(&mut prefix);
        self.seal_with_prefix(message, timestamp, nonce, prefix)
    }

    /// [`MsgCrypt::seal`] with the 16 "random" bytes given, for reproducible output (tests, the
    /// official vectors).
    pub fn seal_with_prefix(
        &self,
        message: &str,
        timestamp: i64,
        nonce: &str,
        prefix: [u8; PREFIX_LEN],
    ) -> Result<Sealed> {
        let timestamp = timestamp.to_string();
        check_timestamp(&timestamp)?;
        check_nonce(nonce)?;
        let encrypt = self.encrypt(message, prefix)?;
        Ok(Sealed {
            msg_signature: self.signature(&timestamp, nonce, &encrypt),
            encrypt,
            timestamp,
            nonce: nonce.to_owned(),
        })
    }

    /// The ciphertext of `message`, in standard base64.
    fn encrypt(&self, message: &str, prefix: [u8; PREFIX_LEN]) -> Result<String> {
        if message.len() > MAX_MESSAGE {
            return Err(MsgCryptError::Oversized { max: MAX_MESSAGE });
        }
        // MAX_MESSAGE is far below u32::MAX.
        let length = u32::try_from(message.len())
            .map_err(|_| MsgCryptError::Oversized { max: MAX_MESSAGE })?;
        let mut plain = Vec::with_capacity(
            PREFIX_LEN + LENGTH_LEN + message.len() + self.receive_id.len() + PAD_BLOCK,
        );
        plain.extend_from_slice(&prefix);
        plain.extend_from_slice(&length.to_be_bytes());
        plain.extend_from_slice(message.as_bytes());
        plain.extend_from_slice(self.receive_id.as_bytes());
        pad(&mut plain);
        self.cbc_encrypt(&mut plain);
        Ok(STANDARD.encode(plain))
    }

    /// Decrypts `encrypted` without checking any signature: only [`MsgCrypt::open`], after
    /// [`MsgCrypt::verify`], and tests call it.
    fn decrypt(&self, encrypted: &str) -> Result<Plain> {
        if encrypted.len() > MAX_ENCRYPTED {
            return Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED });
        }
        let mut data = STANDARD
            .decode(encrypted)
            .map_err(|_| MsgCryptError::BadBase64)?;
        // WeChat pads to whole 32-byte blocks, so every message has one ciphertext only.
        if data.is_empty() || !data.len().is_multiple_of(PAD_BLOCK) {
            return Err(MsgCryptError::BadLength);
        }
        self.cbc_decrypt(&mut data);
        let plain = unpad(&data)?;
        let (prefix, rest) = plain
            .split_first_chunk::<PREFIX_LEN>()
            .ok_or(MsgCryptError::BadLength)?;
        let (length, rest) = rest
            .split_first_chunk::<LENGTH_LEN>()
            .ok_or(MsgCryptError::BadLength)?;
        let length =
            usize::try_from(u32::from_be_bytes(*length)).map_err(|_| MsgCryptError::BadLength)?;
        if length > rest.len() {
            return Err(MsgCryptError::BadLength);
        }
        let (message, receive_id) = rest.split_at(length);
        if receive_id != self.receive_id.as_bytes() {
            return Err(MsgCryptError::WrongReceiveId);
        }
        let message = std::str::from_utf8(message).map_err(|_| MsgCryptError::NotUtf8)?;
        Ok(Plain {
            prefix: *prefix,
            message: message.to_owned(),
        })
    }

    /// AES-256-CBC over whole blocks, in place; `data`'s length is a multiple of 16. The mode is
    /// these few lines over the `aes` block cipher; the official vectors pin it.
    fn cbc_encrypt(&self, data: &mut [u8]) {
        debug_assert!(data.len().is_multiple_of(AES_BLOCK));
        let mut previous = self.iv;
        for chunk in data.chunks_exact_mut(AES_BLOCK) {
            let mut block = aes::Block::default();
            for ((out, plain), chained) in block.iter_mut().zip(&*chunk).zip(&previous) {
                *out = plain ^ chained;
            }
            self.cipher.encrypt_block(&mut block);
            chunk.copy_from_slice(&block);
            previous = block;
        }
    }

    /// The inverse of [`MsgCrypt::cbc_encrypt`].
    fn cbc_decrypt(&self, data: &mut [u8]) {
        let mut previous = self.iv;
        for chunk in data.chunks_exact_mut(AES_BLOCK) {
            let mut block = aes::Block::default();
            block.copy_from_slice(chunk);
            let cipher_block = block;
            self.cipher.decrypt_block(&mut block);
            for ((out, plain), chained) in chunk.iter_mut().zip(&block).zip(&previous) {
                *out = plain ^ chained;
            }
            previous = cipher_block;
        }
    }
}

/// The longest appid, component appid or corpid accepted.
pub const MAX_ID_LEN: usize = 64;

/// The bytes an id may hold: ASCII letters and digits, '_', '-' and '.'.
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.';
        b += 1;
    }
    table
};

/// Whether `s` is a well-formed appid (and so a receive id): 1 to [`MAX_ID_LEN`] ASCII letters,
/// digits, `_`, `-` and `.`, with no `.` at either end and no `..` (the `.` separates a WeCom
/// corpid from its agentid). `wetoken_core::AppId` is parsed by this rule too.
pub fn is_valid_id(s: &str) -> bool {
    // One pass over the bytes: this runs on every token request.
    let bytes = s.as_bytes();
    let mut previous = b'.';
    let mut ok = !bytes.is_empty() && bytes.len() <= MAX_ID_LEN;
    for &b in bytes {
        // No leading '.', and no "..": the byte before the first counts as a '.'.
        ok &= ID_BYTES[usize::from(b)] && !(b == b'.' && previous == b'.');
        previous = b;
    }
    ok && previous != b'.'
}

/// SHA-1 of `input`, in lower-case hex.
pub fn sha1_hex(input: &[u8]) -> String {
    let digest = Sha1::digest(input);
    let mut out = String::with_capacity(40);
    for byte in digest {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// SHA-1, in lower-case hex, of `values` sorted as bytes and concatenated without separator:
/// WXBizMsgCrypt's `msg_signature` rule (and the card signature's).
pub fn sorted_sha1_hex(values: &[&str]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sha1_hex(sorted.concat().as_bytes())
}

/// A fresh nonce for a reply: ten random digits, as WeChat's own.
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| char::from(b'0' + b % 10)).collect()
}

/// Checks an EncodingAESKey's form, without decoding it: 43 characters of the base64 alphabet.
/// Admin routes can use it to refuse a bad key when it is set rather than when a push arrives.
pub fn check_aes_key(encoding_aes_key: &str) -> Result<()> {
    decode_aes_key(encoding_aes_key).map(|_| ())
}

/// Checks a message token's form: 1 to 32 ASCII letters or digits (WeChat allows 3 to 32 for
/// official accounts; WeCom's may be shorter).
pub fn check_token(token: &str) -> Result<()> {
    let ok =
        (1..=MAX_TOKEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(MsgCryptError::InvalidToken)
    }
}

/// The 32-byte AES key: `base64(EncodingAESKey + "=")`. WeChat lets an operator type any 43
/// characters, so the last character's two unused bits may be set (the official vector's are):
/// they are ignored, as WeChat's own libraries do.
fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32]> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let well_formed = encoding_aes_key.len() == EAK_LEN
        && encoding_aes_key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !well_formed {
        return Err(MsgCryptError::InvalidAesKey);
    }
    let key = LENIENT
        .decode(format!("{encoding_aes_key}="))
        .map_err(|_| MsgCryptError::InvalidAesKey)?;
    key.try_into().map_err(|_| MsgCryptError::InvalidAesKey)
}

fn check_timestamp(timestamp: &str) -> Result<()> {
    let ok = (1..=MAX_TIMESTAMP).contains(&timestamp.len())
        && timestamp.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(MsgCryptError::BadParameter("timestamp"))
    }
}

fn check_nonce(nonce: &str) -> Result<()> {
    let ok = (1..=MAX_NONCE).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_graphic());
    // Replies put the nonce in CDATA.
    if ok && !nonce.contains("]]>") {
        Ok(())
    } else {
        Err(MsgCryptError::BadParameter("nonce"))
    }
}

/// WeChat's PKCS#7: 1 to 32 bytes, each holding their count, to a multiple of 32.
fn pad(data: &mut Vec<u8>) {
    let count = PAD_BLOCK - data.len() % PAD_BLOCK;
    // count is 1..=32.
    data.resize(data.len() + count, count as u8);
}

/// Strips [`pad`]'s bytes, refusing anything else.
fn unpad(data: &[u8]) -> Result<&[u8]> {
    let count = usize::from(*data.last().ok_or(MsgCryptError::BadPadding)?);
    if count == 0 || count > PAD_BLOCK || count > data.len() {
        return Err(MsgCryptError::BadPadding);
    }
    let (plain, padding) = data.split_at(data.len() - count);
    if padding.iter().all(|&b| usize::from(b) == count) {
        Ok(plain)
    } else {
        Err(MsgCryptError::BadPadding)
    }
}

/// The `msgcrypt` fuzz target's crypto half (`wetoken_core::fuzz::msgcrypt` adds the open
/// platform's push reading): whatever `data` is, as a push body, as a
/// ciphertext (signed or not), as the plain text inside the cipher, as inner XML or as a message
/// to seal, nothing panics, a message sealed opens to itself, and whatever decrypts re-encrypts
/// to the same text: no message has a second accepted form.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    let Ok(crypt) = MsgCrypt::new(
        "QDG6eK",
        "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        "wx5823bf96d3bd56c7",
    ) else {
        panic!("the fuzz target's key is valid");
    };
    let (timestamp, nonce) = ("1409659813", "1372623149");
    if let Ok(fields) = Envelope::parse(data) {
        let signature = crypt.signature(timestamp, nonce, &fields.encrypt);
        let _ = crypt.open_envelope(&signature, timestamp, nonce, data);
    }
    let text = String::from_utf8_lossy(data);
    let _ = crypt.open(
        "0000000000000000000000000000000000000000",
        timestamp,
        nonce,
        &text,
    );
    let opens_canonically = |encrypted: &str| {
        let signature = crypt.signature(timestamp, nonce, encrypted);
        if let Ok(message) = crypt.open(&signature, timestamp, nonce, encrypted)
            && let Ok(plain) = crypt.decrypt(encrypted)
        {
            assert_eq!(plain.message, message);
            let again = crypt
                .encrypt(&message, plain.prefix)
                .expect("a decrypted message is small enough to encrypt");
            assert_eq!(
                again, encrypted,
                "decryption accepted a non-canonical ciphertext"
            );
        }
    };
    opens_canonically(&text);
    // `data` as the plain text inside the cipher: the padding and layout checks, which a fuzzer
    // cannot reach through AES.
    let mut plain = data.to_vec();
    plain.truncate(data.len() - data.len() % AES_BLOCK);
    crypt.cbc_encrypt(&mut plain);
    opens_canonically(&STANDARD.encode(plain));
    let _ = XmlFields::parse(&text);
    if text.len() > MAX_MESSAGE {
        return;
    }
    let mut prefix = [0u8; PREFIX_LEN];
    for (slot, byte) in prefix.iter_mut().zip(data) {
        *slot = *byte;
    }
    let sealed = crypt
        .seal_with_prefix(&text, 1_409_659_813, nonce, prefix)
        .expect("a message below the limit seals");
    let opened = crypt
        .open(
            &sealed.msg_signature,
            &sealed.timestamp,
            nonce,
            &sealed.encrypt,
        )
        .expect("a sealed message opens");
    assert_eq!(opened, text);
}
