use proptest::prelude::*;

use super::*;

// WeCom's published sample, as in wechat-api.md.
const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";
const RECEIVE_ID: &str = "wx5823bf96d3bd56c7";

const URL_SIGNATURE: &str = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3";
const URL_TIMESTAMP: &str = "1409659589";
const URL_NONCE: &str = "263014780";
const URL_ECHOSTR: &str =
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ==";

const MSG_SIGNATURE: &str = "477715d11cdb4164915debcba66cb864d751f3e6";
const MSG_TIMESTAMP: &str = "1409659813";
const MSG_NONCE: &str = "1372623149";
const MSG_ENCRYPT: &str = "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==";

const PREFIX: [u8; 16] = *b"0123456789abcdef";

fn crypt() -> MsgCrypt {
    MsgCrypt::new(TOKEN, KEY, RECEIVE_ID).expect("the official key is valid")
}

/// `message` sealed with [`PREFIX`], then changed by `tamper` and signed again, so that the
/// change reaches decryption instead of stopping at the signature.
fn tampered(message: &str, tamper: impl FnOnce(&mut Vec<u8>)) -> Result<String> {
    let crypt = crypt();
    let sealed = crypt
        .seal_with_prefix(message, 1_409_659_813, MSG_NONCE, PREFIX)
        .unwrap();
    let mut raw = STANDARD.decode(&sealed.encrypt).unwrap();
    tamper(&mut raw);
    open_signed(&crypt, &STANDARD.encode(raw))
}

/// Opens `encrypted` under a valid signature.
fn open_signed(crypt: &MsgCrypt, encrypted: &str) -> Result<String> {
    let signature = crypt.signature(MSG_TIMESTAMP, MSG_NONCE, encrypted);
    crypt.open(&signature, MSG_TIMESTAMP, MSG_NONCE, encrypted)
}

/// `plain` (already laid out, padding included or not) encrypted and signed as is.
fn raw_encrypted(crypt: &MsgCrypt, mut plain: Vec<u8>) -> String {
    crypt.cbc_encrypt(&mut plain);
    STANDARD.encode(plain)
}

fn layout(message: &[u8], receive_id: &[u8]) -> Vec<u8> {
    let mut plain = PREFIX.to_vec();
    plain.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    plain.extend_from_slice(message);
    plain.extend_from_slice(receive_id);
    plain
}

#[test]
fn official_url_check_vector() {
    let crypt = crypt();
    assert_eq!(
        crypt.signature(URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR),
        URL_SIGNATURE
    );
    let echo = crypt
        .open(URL_SIGNATURE, URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR)
        .unwrap();
    assert_eq!(echo, "1616140317555161061");
    // Encrypting with the prefix WeChat drew gives WeChat's ciphertext back, byte for byte.
    let plain = crypt.decrypt(URL_ECHOSTR).unwrap();
    let sealed = crypt
        .seal_with_prefix(&echo, 1_409_659_589, URL_NONCE, plain.prefix)
        .unwrap();
    assert_eq!(sealed.encrypt, URL_ECHOSTR);
    assert_eq!(sealed.msg_signature, URL_SIGNATURE);
}

#[test]
fn official_message_vector() {
    let crypt = crypt();
    let message = crypt
        .open(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT)
        .unwrap();
    assert!(message.contains('\n'));
    let fields = XmlFields::parse(&message).unwrap();
    assert_eq!(fields.get("ToUserName"), Some(RECEIVE_ID));
    assert_eq!(fields.get("FromUserName"), Some("mycreate"));
    assert_eq!(fields.get("CreateTime"), Some("1409659813"));
    assert_eq!(fields.get("Content"), Some("hello"));
    assert_eq!(fields.get("MsgId"), Some("4561255354251345929"));
    assert_eq!(fields.get("AgentID"), Some("218"));

    let plain = crypt.decrypt(MSG_ENCRYPT).unwrap();
    let sealed = crypt
        .seal_with_prefix(&message, 1_409_659_813, MSG_NONCE, plain.prefix)
        .unwrap();
    assert_eq!(sealed.encrypt, MSG_ENCRYPT);
    assert_eq!(sealed.msg_signature, MSG_SIGNATURE);
    assert_eq!(sealed.timestamp, MSG_TIMESTAMP);
}

#[test]
fn official_message_in_its_envelope() {
    let body = format!(
        "<xml><ToUserName><![CDATA[{RECEIVE_ID}]]></ToUserName>\n\
         <Encrypt><![CDATA[{MSG_ENCRYPT}]]></Encrypt>\n<AgentID><![CDATA[218]]></AgentID>\n</xml>"
    );
    let envelope = Envelope::parse(body.as_bytes()).unwrap();
    assert_eq!(envelope.encrypt, MSG_ENCRYPT);
    assert_eq!(envelope.to_user_name.as_deref(), Some(RECEIVE_ID));
    assert_eq!(envelope.app_id, None);
    let fields = crypt()
        .open_envelope(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, body.as_bytes())
        .unwrap();
    assert_eq!(fields.get("Content"), Some("hello"));
    assert_eq!(
        crypt().open_envelope(URL_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, body.as_bytes()),
        Err(MsgCryptError::BadSignature)
    );
}

#[test]
fn a_sealed_reply_opens_and_its_envelope_carries_the_signature() {
    let crypt = crypt();
    let message = "<xml><Content><![CDATA[你好, ]]&gt; world]]></Content></xml>";
    let sealed = crypt.seal(message, 1_700_000_000, "4242").unwrap();
    let again = crypt.seal(message, 1_700_000_000, "4242").unwrap();
    assert_ne!(sealed.encrypt, again.encrypt, "the prefix is random");
    let xml = sealed.to_xml();
    let reply = XmlFields::parse(&xml).unwrap();
    assert_eq!(reply.get("Encrypt"), Some(sealed.encrypt.as_str()));
    assert_eq!(reply.get("TimeStamp"), Some("1700000000"));
    assert_eq!(reply.get("Nonce"), Some("4242"));
    let signature = reply.get("MsgSignature").unwrap();
    assert_eq!(
        crypt.open(signature, "1700000000", "4242", &sealed.encrypt),
        Ok(message.to_owned())
    );
    assert_eq!(
        crypt.open_envelope(signature, "1700000000", "4242", xml.as_bytes()),
        XmlFields::parse(message)
    );
    // An empty message is a message.
    let empty = crypt.seal_with_prefix("", 1, "n", PREFIX).unwrap();
    assert_eq!(
        crypt.open(&empty.msg_signature, "1", "n", &empty.encrypt),
        Ok(String::new())
    );
    let nonce = random_nonce();
    assert_eq!(nonce.len(), 10);
    assert!(nonce.bytes().all(|b| b.is_ascii_digit()));
}

#[test]
fn a_signature_that_does_not_match_is_refused_before_decryption() {
    let crypt = crypt();
    let open = |sig: &str, ts: &str, nonce: &str, enc: &str| crypt.open(sig, ts, nonce, enc);
    assert!(
        open(
            &MSG_SIGNATURE.to_uppercase(),
            MSG_TIMESTAMP,
            MSG_NONCE,
            MSG_ENCRYPT
        )
        .is_ok()
    );
    for (sig, ts, nonce, enc) in [
        (URL_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT),
        (MSG_SIGNATURE, "1409659814", MSG_NONCE, MSG_ENCRYPT),
        (MSG_SIGNATURE, MSG_TIMESTAMP, "1372623148", MSG_ENCRYPT),
        (MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, URL_ECHOSTR),
        (&MSG_SIGNATURE[..39], MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT),
        (
            &format!("{MSG_SIGNATURE}0"),
            MSG_TIMESTAMP,
            MSG_NONCE,
            MSG_ENCRYPT,
        ),
        ("", MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT),
        // Not decryptable at all: the signature is checked first.
        ("0", MSG_TIMESTAMP, MSG_NONCE, "%%%"),
    ] {
        assert_eq!(
            open(sig, ts, nonce, enc),
            Err(MsgCryptError::BadSignature),
            "{sig} {ts} {nonce}"
        );
    }
    // Another token signs differently.
    let other = MsgCrypt::new("QDG6eL", KEY, RECEIVE_ID).unwrap();
    assert_eq!(
        other.open(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT),
        Err(MsgCryptError::BadSignature)
    );
}

#[test]
fn the_signature_sorts_its_four_strings_as_bytes() {
    // "QDG6eK" < "b" < "c" < "d" as bytes; any other order is another hash.
    let crypt = crypt();
    assert_eq!(
        crypt.signature("9", "b", "d"),
        sorted_sha1_hex(&["9", "QDG6eK", "b", "d"])
    );
    use sha1::{Digest, Sha1};
    let expected: String = Sha1::digest(b"9QDG6eKbd")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(crypt.signature("9", "b", "d"), expected);
}

#[test]
fn tampered_ciphertexts_are_refused_with_the_right_error() {
    let crypt = crypt();
    // A bit flipped anywhere, with the old signature: the signature fails.
    let mut raw = STANDARD.decode(MSG_ENCRYPT).unwrap();
    raw[40] ^= 1;
    assert_eq!(
        crypt.open(
            MSG_SIGNATURE,
            MSG_TIMESTAMP,
            MSG_NONCE,
            &STANDARD.encode(&raw)
        ),
        Err(MsgCryptError::BadSignature)
    );
    // Truncated base64 under the old signature, then signed anew.
    let truncated = &MSG_ENCRYPT[..MSG_ENCRYPT.len() - 1];
    assert_eq!(
        crypt.open(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, truncated),
        Err(MsgCryptError::BadSignature)
    );
    assert_eq!(
        open_signed(&crypt, truncated),
        Err(MsgCryptError::BadBase64)
    );
    assert_eq!(
        open_signed(&crypt, &format!("{MSG_ENCRYPT} ")),
        Err(MsgCryptError::BadBase64)
    );
    // Valid base64 of a length that is not whole AES blocks.
    assert_eq!(
        open_signed(&crypt, &MSG_ENCRYPT[..MSG_ENCRYPT.len() - 4]),
        Err(MsgCryptError::BadLength)
    );

    // "hello" for wx5823bf96d3bd56c7: 16 + 4 + 5 + 18 = 43 bytes, padded with 21 bytes of 21 to
    // 64: four AES blocks. In CBC a flipped ciphertext bit flips the same bit of the next
    // block's plain text.
    assert!(tampered("hello", |_| {}).is_ok());
    // Byte 0 → plain byte 16, the length's high byte: longer than what follows.
    assert_eq!(
        tampered("hello", |raw| raw[0] ^= 0x80),
        Err(MsgCryptError::BadLength)
    );
    // Byte 14 → plain byte 30, inside the receive id (25..43).
    assert_eq!(
        tampered("hello", |raw| raw[14] ^= 1),
        Err(MsgCryptError::WrongReceiveId)
    );
    // Byte 47 → plain byte 63, the last padding byte.
    assert_eq!(
        tampered("hello", |raw| raw[47] ^= 1),
        Err(MsgCryptError::BadPadding)
    );
    // Byte 40 → plain byte 56, a padding byte that no longer holds the count.
    assert_eq!(
        tampered("hello", |raw| raw[40] ^= 4),
        Err(MsgCryptError::BadPadding)
    );
    // The last two blocks dropped: what ends the plain text is the receive id's 'b'.
    assert_eq!(
        tampered("hello", |raw| raw.truncate(32)),
        Err(MsgCryptError::BadPadding)
    );
    // One block dropped: whole AES blocks, but not WeChat's 32 bytes.
    assert_eq!(
        tampered("hello", |raw| raw.truncate(48)),
        Err(MsgCryptError::BadLength)
    );
    assert_eq!(
        tampered("hello", |raw| raw.clear()),
        Err(MsgCryptError::BadLength)
    );
}

#[test]
fn padding_must_be_wechats_pkcs7() {
    let crypt = crypt();
    let base = layout(b"hi", RECEIVE_ID.as_bytes()); // 40 bytes
    let padded = |pad: &[u8]| {
        let mut plain = base.clone();
        plain.extend_from_slice(pad);
        raw_encrypted(&crypt, plain)
    };
    // 24 bytes of 24: right.
    assert_eq!(open_signed(&crypt, &padded(&[24; 24])), Ok("hi".to_owned()));
    // A count of 0, one larger than 32, or bytes that disagree with the count.
    let mut zero = vec![24; 23];
    zero.push(0);
    assert_eq!(
        open_signed(&crypt, &padded(&zero)),
        Err(MsgCryptError::BadPadding)
    );
    let mut big = base.clone();
    big.extend_from_slice(&[33; 8]);
    big.extend_from_slice(&[33; 48]);
    assert_eq!(
        open_signed(&crypt, &raw_encrypted(&crypt, big)),
        Err(MsgCryptError::BadPadding)
    );
    // Padded to 16 bytes, as PKCS#7 for AES would: WeChat's is 32, so this is a second
    // ciphertext for the same message, and refused.
    let mut to_16 = base.clone();
    to_16.extend_from_slice(&[8; 8]);
    assert_eq!(
        open_signed(&crypt, &raw_encrypted(&crypt, to_16)),
        Err(MsgCryptError::BadLength)
    );
    let mut mixed = vec![24; 24];
    mixed[0] = 23;
    assert_eq!(
        open_signed(&crypt, &padded(&mixed)),
        Err(MsgCryptError::BadPadding)
    );
    // More padding than plain text: a whole block of 32s under a count of 32 is fine, but the
    // layout that remains is too short for the prefix and length.
    assert_eq!(
        open_signed(&crypt, &raw_encrypted(&crypt, vec![32; 32])),
        Err(MsgCryptError::BadLength)
    );
}

#[test]
fn lengths_that_do_not_fit_are_refused() {
    let crypt = crypt();
    let with_length = |length: u32| {
        let mut plain = PREFIX.to_vec();
        plain.extend_from_slice(&length.to_be_bytes());
        plain.extend_from_slice(RECEIVE_ID.as_bytes());
        pad(&mut plain);
        raw_encrypted(&crypt, plain)
    };
    assert_eq!(open_signed(&crypt, &with_length(0)), Ok(String::new()));
    // The message would eat into the receive id, or run past the end.
    assert_eq!(
        open_signed(&crypt, &with_length(1)),
        Err(MsgCryptError::WrongReceiveId)
    );
    assert_eq!(
        open_signed(&crypt, &with_length(19)),
        Err(MsgCryptError::BadLength)
    );
    assert_eq!(
        open_signed(&crypt, &with_length(u32::MAX)),
        Err(MsgCryptError::BadLength)
    );
    // Shorter than prefix and length.
    let mut short = PREFIX.to_vec();
    short.extend_from_slice(&[0, 0]);
    pad(&mut short);
    assert_eq!(
        open_signed(&crypt, &raw_encrypted(&crypt, short)),
        Err(MsgCryptError::BadLength)
    );
}

#[test]
fn a_message_for_another_receiver_is_refused() {
    let crypt = crypt();
    for other in [
        "wx5823bf96d3bd56c8",
        "wx5823bf96d3bd56c",
        "wx5823bf96d3bd56c77",
        "ww1",
    ] {
        let sender = MsgCrypt::new(TOKEN, KEY, other).unwrap();
        let sealed = sender
            .seal_with_prefix("hello", 1, MSG_NONCE, PREFIX)
            .unwrap();
        assert_eq!(
            crypt.open(&sealed.msg_signature, "1", MSG_NONCE, &sealed.encrypt),
            Err(MsgCryptError::WrongReceiveId),
            "{other}"
        );
        assert_eq!(
            sender.open(&sealed.msg_signature, "1", MSG_NONCE, &sealed.encrypt),
            Ok("hello".to_owned())
        );
    }
    // The official vectors are for wx5823bf96d3bd56c7 only.
    let component = MsgCrypt::new(TOKEN, KEY, "wxcomponent0000001").unwrap();
    assert_eq!(
        component.open(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT),
        Err(MsgCryptError::WrongReceiveId)
    );
}

#[test]
fn a_message_that_is_not_utf8_is_refused() {
    let crypt = crypt();
    let mut plain = layout(&[0xff, 0xfe, b'a'], RECEIVE_ID.as_bytes());
    pad(&mut plain);
    assert_eq!(
        open_signed(&crypt, &raw_encrypted(&crypt, plain)),
        Err(MsgCryptError::NotUtf8)
    );
    assert_eq!(
        Envelope::parse(b"<xml><Encrypt>\xff</Encrypt></xml>"),
        Err(MsgCryptError::NotUtf8)
    );
}

#[test]
fn empty_and_huge_inputs_are_refused() {
    let crypt = crypt();
    assert_eq!(open_signed(&crypt, ""), Err(MsgCryptError::BadLength));
    assert_eq!(
        crypt.open("", "", "", ""),
        Err(MsgCryptError::BadParameter("timestamp"))
    );
    assert_eq!(
        crypt.open(MSG_SIGNATURE, MSG_TIMESTAMP, "", MSG_ENCRYPT),
        Err(MsgCryptError::BadParameter("nonce"))
    );
    let huge = "A".repeat(MAX_ENCRYPTED + 4);
    assert_eq!(
        open_signed(&crypt, &huge),
        Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED })
    );
    let just_fits = "A".repeat(MAX_ENCRYPTED);
    assert_eq!(
        open_signed(&crypt, &just_fits),
        Err(MsgCryptError::BadPadding)
    );
    assert_eq!(
        crypt.seal(&"x".repeat(MAX_MESSAGE + 1), 1, "n"),
        Err(MsgCryptError::Oversized { max: MAX_MESSAGE })
    );
    let largest = "x".repeat(MAX_MESSAGE);
    let sealed = crypt.seal(&largest, 1, "n").unwrap();
    assert!(sealed.encrypt.len() <= MAX_ENCRYPTED);
    assert_eq!(
        crypt.open(&sealed.msg_signature, "1", "n", &sealed.encrypt),
        Ok(largest)
    );
    let body = format!("<xml><Encrypt>{huge}</Encrypt></xml>");
    assert_eq!(
        Envelope::parse(body.as_bytes()),
        Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED })
    );
    assert_eq!(
        XmlFields::parse(&body),
        Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED })
    );
}

#[test]
fn timestamps_and_nonces_are_checked() {
    let crypt = crypt();
    for ts in ["", "-1", "1.5", " 1", &"9".repeat(21)] {
        assert_eq!(
            crypt.verify(MSG_SIGNATURE, ts, MSG_NONCE, MSG_ENCRYPT),
            Err(MsgCryptError::BadParameter("timestamp")),
            "{ts:?}"
        );
    }
    assert_eq!(
        crypt.seal("x", -1, "n"),
        Err(MsgCryptError::BadParameter("timestamp"))
    );
    for nonce in ["", "a b", "a\n", "é", "]]>", &"n".repeat(65)] {
        assert_eq!(
            crypt.seal("x", 1, nonce),
            Err(MsgCryptError::BadParameter("nonce")),
            "{nonce:?}"
        );
    }
}

#[test]
fn keys_tokens_and_receive_ids_are_validated() {
    // The official key's last character, 'C', has its two unused bits set: allowed.
    assert!(check_aes_key(KEY).is_ok());
    let key_a = format!("{}A", &KEY[..42]);
    assert!(MsgCrypt::new(TOKEN, &key_a, RECEIVE_ID).is_ok());
    for key in [
        "",
        &KEY[..42],
        &format!("{KEY}A"),
        &format!("{}=", &KEY[..42]),
        &format!("{}-", &KEY[..42]),
        &format!("{}_", &KEY[..42]),
        &format!("{} ", &KEY[..42]),
        &format!("{}é", &KEY[..41]),
    ] {
        assert_eq!(
            MsgCrypt::new(TOKEN, key, RECEIVE_ID).err(),
            Some(MsgCryptError::InvalidAesKey),
            "{key:?}"
        );
    }
    for token in ["", "a b", "tok-en", &"t".repeat(33), "tökén"] {
        assert_eq!(
            MsgCrypt::new(token, KEY, RECEIVE_ID).err(),
            Some(MsgCryptError::InvalidToken),
            "{token:?}"
        );
    }
    assert!(check_token(&"t".repeat(32)).is_ok());
    for id in ["", "wx/1", ".wx", "wx..1", &"w".repeat(65), "wx 1"] {
        assert_eq!(
            MsgCrypt::new(TOKEN, KEY, id).err(),
            Some(MsgCryptError::InvalidReceiveId),
            "{id:?}"
        );
    }
    assert!(MsgCrypt::new(TOKEN, KEY, "ww1234.1000002").is_ok());
}

#[test]
fn nothing_secret_is_shown() {
    let crypt = crypt();
    let debug = format!("{crypt:?}");
    assert!(debug.contains(RECEIVE_ID));
    assert!(
        !debug.contains(TOKEN) && !debug.contains(&KEY[..8]),
        "{debug}"
    );
    let message = crypt
        .open(MSG_SIGNATURE, MSG_TIMESTAMP, MSG_NONCE, MSG_ENCRYPT)
        .unwrap();
    let fields = XmlFields::parse(&message).unwrap();
    let debug = format!("{fields:?}");
    assert!(
        debug.contains("Content") && !debug.contains("hello"),
        "{debug}"
    );
    let errors = [
        MsgCryptError::InvalidAesKey,
        MsgCryptError::InvalidToken,
        MsgCryptError::InvalidReceiveId,
        MsgCryptError::BadParameter("nonce"),
        MsgCryptError::BadSignature,
        MsgCryptError::BadBase64,
        MsgCryptError::BadLength,
        MsgCryptError::BadPadding,
        MsgCryptError::WrongReceiveId,
        MsgCryptError::NotUtf8,
        XmlFields::parse("<xml><a>&secret;</a></xml>").unwrap_err(),
        XmlFields::parse("<xml><a>secret</b></xml>").unwrap_err(),
        MsgCryptError::Oversized { max: 1 },
        MsgCryptError::MissingField("Encrypt"),
        MsgCryptError::BadField("AppId"),
    ];
    for error in errors {
        let text = error.to_string();
        assert!(!text.contains("secret") && !text.contains("::"), "{text}");
        assert!(
            !text.contains(TOKEN) && !text.contains(RECEIVE_ID),
            "{text}"
        );
    }
}

#[test]
fn envelopes_and_inner_xml_are_parsed_strictly() {
    let parse = |body: &str| Envelope::parse(body.as_bytes());
    let component = parse(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<xml>\n  <AppId><![CDATA[wxc]]></AppId>\n  \
         <Encrypt><![CDATA[abc=]]></Encrypt>\n</xml>\n",
    )
    .unwrap();
    assert_eq!(component.encrypt, "abc=");
    assert_eq!(component.app_id.as_deref(), Some("wxc"));
    assert_eq!(component.to_user_name, None);
    // Plain text with XML's own entities and character references.
    let fields = XmlFields::parse(
        "<xml><A>a &amp; b &lt;c&gt; &#x4F60;&#22909;</A><B/><C><D>x</D></C><!-- c --></xml>",
    )
    .unwrap();
    assert_eq!(fields.get("A"), Some("a & b <c> 你好"));
    assert_eq!(fields.get("B"), Some(""));
    assert_eq!(
        fields.get("C"),
        Some(""),
        "nested elements are not flattened"
    );
    assert_eq!(fields.get("D"), None);
    assert_eq!(fields.names().collect::<Vec<_>>(), ["A", "B", "C"]);

    let bad_xml = |body: &str| match parse(body) {
        Err(MsgCryptError::BadXml(reason)) => reason,
        other => panic!("{body}: {other:?}"),
    };
    // DTDs, so no entity of any kind, internal, external or recursive, is ever declared.
    for dtd in [
        "<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><Encrypt>&e;</Encrypt></xml>",
        "<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><Encrypt>&e;</Encrypt></xml>",
        "<!DOCTYPE xml SYSTEM \"http://127.0.0.1/x.dtd\"><xml><Encrypt>a</Encrypt></xml>",
        "<!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">\
         <!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">]><xml><Encrypt>&c;</Encrypt></xml>",
        "<!DOCTYPE xml><xml><Encrypt>a</Encrypt></xml>",
    ] {
        assert!(bad_xml(dtd).starts_with("a DTD is not allowed"), "{dtd}");
    }
    assert!(
        bad_xml("<xml><Encrypt>&e;</Encrypt></xml>").starts_with("only XML's predefined entities")
    );
    for body in [
        "",
        "Encrypt",
        "<xml><Encrypt>a</Encrypt>",
        "<xml><Encrypt>a</encrypt></xml>",
        "<xml><Encrypt>a</Encrypt></xml><xml/>",
        "<xml><Encrypt>a & b</Encrypt></xml>",
    ] {
        bad_xml(body);
    }
    assert_eq!(
        bad_xml("<root><Encrypt>a</Encrypt></root>"),
        "the root element is not <xml>"
    );
    assert_eq!(
        bad_xml("<x:xml xmlns:x=\"urn:x\"><Encrypt>a</Encrypt></x:xml>"),
        "the root element is not <xml>"
    );
    // Two ciphertexts: which one was signed would be a guess.
    assert_eq!(
        bad_xml("<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>"),
        "an element appears twice"
    );
    assert_eq!(
        parse("<xml><ToUserName>wx</ToUserName></xml>"),
        Err(MsgCryptError::MissingField("Encrypt"))
    );
    // Too many nodes, and too deep, within the size limit.
    let many = format!("<xml>{}<Encrypt>a</Encrypt></xml>", "<a/>".repeat(5000));
    assert!(bad_xml(&many).starts_with("it has too many nodes"));
    let deep = format!(
        "<xml>{}{}</xml>",
        "<a>".repeat(20_000),
        "</a>".repeat(20_000)
    );
    assert!(bad_xml(&deep).starts_with("it has too many nodes"));
}

#[test]
fn fuzz_seeds_hold() {
    for seed in [
        &b""[..],
        b"<xml><Encrypt>abc</Encrypt></xml>",
        URL_ECHOSTR.as_bytes(),
        MSG_ENCRYPT.as_bytes(),
        b"<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>",
    ] {
        fuzz(seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Decryption, signed or not, and every parser survive any input; what opens re-encrypts
    /// to itself.
    #[test]
    fn nothing_panics_on_arbitrary_input(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        fuzz(&data);
    }

    /// Base64 of random bytes, signed, reaches the AES and padding code rather than stopping at
    /// base64 or the signature.
    #[test]
    fn decrypting_random_ciphertexts_never_panics(blocks in proptest::collection::vec(any::<[u8; 16]>(), 0..12)) {
        let crypt = crypt();
        let encrypted = STANDARD.encode(blocks.concat());
        let result = open_signed(&crypt, &encrypted);
        prop_assert!(result.is_err() || blocks.len() >= 3);
        fuzz(encrypted.as_bytes());
    }

    /// Plain texts near the layout (lengths, receive ids and padding right or wrong) reach
    /// every check behind the cipher; the right one opens, the rest are refused, and what
    /// opens has one form only (checked in `fuzz`): PKCS#7 to 16 or 48 bytes, or with bytes
    /// that are not the count, never opens.
    #[test]
    fn any_plain_text_opens_canonically_or_is_refused(
        message in "[a-z<>/ ]{0,70}",
        length in proptest::option::weighted(0.2, any::<u32>()),
        receive_id in proptest::option::weighted(0.2, "[a-z0-9]{0,20}"),
        padding in proptest::option::weighted(
            0.6,
            (proptest::sample::select(vec![16usize, 48, 64]), proptest::option::weighted(0.2, any::<u8>())),
        ),
    ) {
        let crypt = crypt();
        let honest = length.is_none() && receive_id.is_none() && padding.is_none();
        let mut plain = PREFIX.to_vec();
        let length = length.unwrap_or(u32::try_from(message.len()).unwrap());
        plain.extend_from_slice(&length.to_be_bytes());
        plain.extend_from_slice(message.as_bytes());
        plain.extend_from_slice(receive_id.as_deref().unwrap_or(RECEIVE_ID).as_bytes());
        match padding {
            // To a multiple of `block`, with bytes of the count or of `value`.
            Some((block, value)) => {
                let count = block - plain.len() % block;
                let byte = value.unwrap_or(u8::try_from(count).unwrap());
                plain.extend(std::iter::repeat_n(byte, count));
            }
            None => pad(&mut plain),
        }
        fuzz(&plain);
        if honest {
            prop_assert_eq!(open_signed(&crypt, &raw_encrypted(&crypt, plain)), Ok(message));
        }
    }

    /// Whatever is sealed opens to itself, for any message, prefix, time and receive id.
    #[test]
    fn seal_then_open_is_identity(
        message in any::<String>(),
        prefix in any::<[u8; 16]>(),
        timestamp in 0i64..=i64::MAX,
        nonce in "[!-~]{1,64}",
        receive_id in "[a-z0-9]{1,64}",
    ) {
        prop_assume!(!nonce.contains("]]>"));
        let crypt = MsgCrypt::new(TOKEN, KEY, &receive_id).unwrap();
        let sealed = crypt.seal_with_prefix(&message, timestamp, &nonce, prefix).unwrap();
        prop_assert_eq!(
            crypt.open(&sealed.msg_signature, &sealed.timestamp, &nonce, &sealed.encrypt),
            Ok(message.clone())
        );
        let plain = crypt.decrypt(&sealed.encrypt).unwrap();
        prop_assert_eq!(plain.prefix, prefix);
        let envelope = Envelope::parse(sealed.to_xml().as_bytes()).unwrap();
        prop_assert_eq!(envelope.encrypt, sealed.encrypt);
    }
}
