//! A blocking flavour, for callers without an async runtime. Each source runs a private
//! current-thread runtime; do not call these from inside an async runtime.

use std::time::SystemTime;

use crate::{Error, TokenSource};

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Transport {
            url: String::new(),
            message: format!("cannot start a runtime: {e}"),
        })
}

/// A blocking [`crate::AccessToken`].
pub struct AccessToken {
    inner: crate::AccessToken,
    runtime: tokio::runtime::Runtime,
}

impl AccessToken {
    /// A source for the token route at `url`.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Self::from_async(crate::AccessToken::by_url(url)?)
    }

    /// Wraps an async source built with [`crate::AccessToken::builder`].
    pub fn from_async(inner: crate::AccessToken) -> Result<Self, Error> {
        Ok(Self {
            inner,
            runtime: runtime()?,
        })
    }

    /// The token.
    pub fn token(&self) -> Result<String, Error> {
        self.runtime.block_on(self.inner.token())
    }

    /// Reports a token WeChat rejected.
    pub fn invalidate(&self, bad: &str) -> Result<(), Error> {
        self.runtime.block_on(self.inner.invalidate(bad))
    }

    /// When the cached token expires, if one is cached.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.runtime.block_on(self.inner.expires_at())
    }
}

/// A blocking [`crate::JsapiTicket`].
pub struct JsapiTicket {
    inner: crate::JsapiTicket,
    runtime: tokio::runtime::Runtime,
}

impl JsapiTicket {
    /// A source for the ticket route at `url`.
    pub fn by_url(url: &str) -> Result<Self, Error> {
        Self::from_async(crate::JsapiTicket::by_url(url)?)
    }

    /// Wraps an async source built with [`crate::JsapiTicket::builder`].
    pub fn from_async(inner: crate::JsapiTicket) -> Result<Self, Error> {
        Ok(Self {
            inner,
            runtime: runtime()?,
        })
    }

    /// The ticket.
    pub fn ticket(&self) -> Result<String, Error> {
        self.runtime.block_on(self.inner.ticket())
    }

    /// Reports a ticket WeChat rejected.
    pub fn invalidate(&self, bad: &str) -> Result<(), Error> {
        self.runtime.block_on(self.inner.invalidate(bad))
    }
}
