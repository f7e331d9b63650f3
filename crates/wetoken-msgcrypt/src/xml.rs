//! The XML of pushes: the outer envelope and the inner message's fields.
//!
//! WeChat's XML is flat: `<xml>` holding elements whose text (often CDATA) is the value. It is
//! parsed by `roxmltree` with DTDs refused (so no entity can be declared, let alone an external
//! one, and nothing is ever fetched), XML's five entities and character references only, at most
//! [`MAX_XML_NODES`] nodes and [`MAX_ENCRYPTED`] bytes.

use std::fmt;

use crate::{MAX_ENCRYPTED, MAX_XML_NODES, MsgCryptError, Result};

/// The longest verify ticket, authorization code or pre-auth code accepted.
pub const MAX_CODE: usize = 512;

/// The top-level elements of an `<xml>` document, each with its text, in document order.
///
/// An element holding other elements (WeChat's `ScanCodeInfo`, `Articles`…) is listed with an
/// empty text; reading inside it is for a later need. An element may appear once only, so that
/// no two readers can disagree about which one counts. `Debug` shows the names, not the values,
/// which may be tickets or codes.
#[derive(Clone, PartialEq, Eq)]
pub struct XmlFields {
    fields: Vec<(String, String)>,
}

impl fmt::Debug for XmlFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.fields.iter().map(|(name, _)| name))
            .finish()
    }
}

impl XmlFields {
    /// Parses `<xml><Name>text</Name>…</xml>`.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_ENCRYPTED {
            return Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED });
        }
        let options = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_XML_NODES,
            entity_resolver: None,
        };
        let document = roxmltree::Document::parse_with_options(text, options).map_err(xml_error)?;
        let root = document.root_element();
        if root.tag_name().name() != "xml" || root.tag_name().namespace().is_some() {
            return Err(MsgCryptError::BadXml(
                "the root element is not <xml>".to_owned(),
            ));
        }
        let mut fields: Vec<(String, String)> = Vec::new();
        for element in root.children().filter(roxmltree::Node::is_element) {
            let name = element.tag_name().name();
            if fields.iter().any(|(seen, _)| seen == name) {
                return Err(MsgCryptError::BadXml("an element appears twice".to_owned()));
            }
            let value = if element.children().any(|c| c.is_element()) {
                String::new()
            } else {
                element
                    .children()
                    .filter(roxmltree::Node::is_text)
                    .filter_map(|c| c.text())
                    .collect()
            };
            fields.push((name.to_owned(), value));
        }
        Ok(Self { fields })
    }

    /// The text of the element `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// The text of the element `name`, which must be present.
    pub fn require(&self, name: &'static str) -> Result<&str> {
        self.get(name).ok_or(MsgCryptError::MissingField(name))
    }

    /// The element names, in document order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(name, _)| name.as_str())
    }

    /// The element `name` as a non-negative integer (a `CreateTime`, an expiry), which must be
    /// present.
    pub fn integer(&self, name: &'static str) -> Result<i64> {
        let text = self.require(name)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MsgCryptError::BadField(name));
        }
        text.parse().map_err(|_| MsgCryptError::BadField(name))
    }

    /// The element `name` as a ticket or code (1 to [`MAX_CODE`] printable ASCII characters),
    /// which must be present.
    pub fn code(&self, name: &'static str) -> Result<&str> {
        let text = self.require(name)?;
        let ok = (1..=MAX_CODE).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(text)
        } else {
            Err(MsgCryptError::BadField(name))
        }
    }
}

/// A push's outer envelope: `<xml><ToUserName>…</ToUserName><Encrypt>…</Encrypt></xml>`, or with
/// `<AppId>` for the open platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The ciphertext, in base64, as signed.
    pub encrypt: String,
    /// `ToUserName`, when present (official accounts, WeCom).
    pub to_user_name: Option<String>,
    /// `AppId`, when present (the open platform's pushes).
    pub app_id: Option<String>,
}

impl Envelope {
    /// Parses a push body: at most [`MAX_ENCRYPTED`] bytes of UTF-8 XML with an `Encrypt`
    /// element.
    pub fn parse(body: &[u8]) -> Result<Self> {
        if body.len() > MAX_ENCRYPTED {
            return Err(MsgCryptError::Oversized { max: MAX_ENCRYPTED });
        }
        let text = std::str::from_utf8(body).map_err(|_| MsgCryptError::NotUtf8)?;
        let fields = XmlFields::parse(text)?;
        Ok(Self {
            encrypt: fields.require("Encrypt")?.to_owned(),
            to_user_name: fields.get("ToUserName").map(str::to_owned),
            app_id: fields.get("AppId").map(str::to_owned),
        })
    }
}

/// A parser error as a reason and a position, never quoting the input.
fn xml_error(error: roxmltree::Error) -> MsgCryptError {
    use roxmltree::Error as E;
    let reason = match error {
        E::DtdDetected => "a DTD is not allowed",
        E::NodesLimitReached => "it has too many nodes",
        E::UnknownEntityReference(..) | E::EntityReferenceLoop(..) => {
            "only XML's predefined entities and character references are allowed"
        }
        E::NoRootNode => "it has no root element",
        _ => "it is not well-formed",
    };
    let position = error.pos();
    MsgCryptError::BadXml(format!(
        "{reason} (line {}, column {})",
        position.row, position.col
    ))
}
