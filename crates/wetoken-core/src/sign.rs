//! The signatures pages and card APIs need, computed from a ticket.

use wetoken_msgcrypt::{sha1_hex, sorted_sha1_hex};

/// The page URL as the JS-SDK signs it: without `#` and what follows.
pub fn signable_url(url: &str) -> &str {
    url.split_once('#').map_or(url, |(before, _)| before)
}

/// The JS-SDK signature for `wx.config`: SHA-1 of
/// `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` (fields sorted by name, raw values), in
/// lower-case hex. `url` is signed as given; strip its fragment with [`signable_url`] first.
pub fn jsapi_signature(ticket: &str, noncestr: &str, timestamp: i64, url: &str) -> String {
    let text = format!("jsapi_ticket={ticket}&noncestr={noncestr}&timestamp={timestamp}&url={url}");
    sha1_hex(text.as_bytes())
}

/// The card signature: the values present (api_ticket, timestamp, card_id, code, openid,
/// nonce_str, …) sorted as strings, concatenated without separator, SHA-1, lower-case hex.
pub fn card_signature(values: &[&str]) -> String {
    sorted_sha1_hex(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_jsapi_vector() {
        let ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg";
        assert_eq!(
            jsapi_signature(
                ticket,
                "Wm3WZYTPz0wzccnW",
                1414587457,
                "http://mp.weixin.qq.com?params=value"
            ),
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed"
        );
    }

    #[test]
    fn official_card_vector() {
        let values = [
            "1434008071",
            "1404896688",
            "pjZ8Yt1XGILfi-FUsewpnnolGgZk",
            "ojZ8YtyVyr30HheH3CM73y7h4jJE",
            "123",
        ];
        assert_eq!(
            card_signature(&values),
            "f137ab68b7f8112d20ee528ab6074564e2796250"
        );
    }

    #[test]
    fn fragments_are_not_signed() {
        assert_eq!(signable_url("http://a/b?x=1#top"), "http://a/b?x=1");
        assert_eq!(signable_url("http://a/b"), "http://a/b");
    }
}
