use super::*;

const TOKEN: &str = "QDG6eK";
const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

/// An official account's crypt, with the official vectors' token, key and receive id.
fn crypt() -> MsgCrypt {
    MsgCrypt::new(TOKEN, KEY, "wx5823bf96d3bd56c7").unwrap()
}

fn component_fields(body: &str) -> Result<ComponentPush> {
    ComponentPush::from_fields(&XmlFields::parse(body)?)
}

#[test]
fn component_pushes_are_read() {
    let ticket = component_fields(
        "<xml><AppId>wxcomponent</AppId><CreateTime>1413192605</CreateTime>\
         <InfoType>component_verify_ticket</InfoType>\
         <ComponentVerifyTicket>ticket@@@abc-DEF_123</ComponentVerifyTicket></xml>",
    )
    .unwrap();
    let ComponentPush::VerifyTicket {
        component_appid,
        create_time,
        ticket,
    } = &ticket
    else {
        panic!("{ticket:?}");
    };
    assert_eq!(component_appid.as_str(), "wxcomponent");
    assert_eq!(*create_time, 1_413_192_605);
    assert_eq!(ticket.expose(), "ticket@@@abc-DEF_123");
    assert!(!format!("{ticket:?}").contains("abc"));

    let authorized = |info_type: &str, pre: &str| {
        component_fields(&format!(
            "<xml><AppId>wxcomponent</AppId><CreateTime>1413192760</CreateTime>\
             <InfoType>{info_type}</InfoType><AuthorizerAppid>wxauthorizer</AuthorizerAppid>\
             <AuthorizationCode>queryauthcode@@@x</AuthorizationCode>\
             <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>{pre}</xml>"
        ))
    };
    let expected = Authorization {
        component_appid: AppId::parse("wxcomponent").unwrap(),
        create_time: 1_413_192_760,
        authorizer_appid: AppId::parse("wxauthorizer").unwrap(),
        authorization_code: Secret::new("queryauthcode@@@x"),
        code_expires_at: 1_413_196_360,
        pre_auth_code: Some(Secret::new("preauthcode@@@y")),
    };
    let pre = "<PreAuthCode>preauthcode@@@y</PreAuthCode>";
    assert_eq!(
        authorized("authorized", pre),
        Ok(ComponentPush::Authorized(expected.clone()))
    );
    assert_eq!(
        authorized("updateauthorized", ""),
        Ok(ComponentPush::UpdateAuthorized(Authorization {
            pre_auth_code: None,
            ..expected
        }))
    );
    assert_eq!(
        component_fields(
            "<xml><AppId>wxcomponent</AppId><CreateTime>1</CreateTime>\
             <InfoType>unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>"
        ),
        Ok(ComponentPush::Unauthorized {
            component_appid: AppId::parse("wxcomponent").unwrap(),
            create_time: 1,
            authorizer_appid: AppId::parse("wxa").unwrap(),
        })
    );
    assert!(matches!(
        component_fields(
            "<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>notify_x</InfoType></xml>"
        ),
        Ok(ComponentPush::Other { info_type, .. }) if info_type == "notify_x"
    ));
}

#[test]
fn component_pushes_with_missing_or_bad_fields_are_refused() {
    let base = |fields: &str| component_fields(&format!("<xml>{fields}</xml>"));
    let head = "<AppId>wxc</AppId><CreateTime>1</CreateTime>";
    for (fields, error) in [
        (
            "<CreateTime>1</CreateTime><InfoType>unauthorized</InfoType>".to_owned(),
            MsgCryptError::MissingField("AppId"),
        ),
        (
            "<AppId>wx/c</AppId><CreateTime>1</CreateTime><InfoType>x</InfoType>".to_owned(),
            MsgCryptError::BadField("AppId"),
        ),
        (
            "<AppId>wxc</AppId><CreateTime>-1</CreateTime><InfoType>x</InfoType>".to_owned(),
            MsgCryptError::BadField("CreateTime"),
        ),
        (
            "<AppId>wxc</AppId><CreateTime>99999999999999999999</CreateTime><InfoType>x</InfoType>"
                .to_owned(),
            MsgCryptError::BadField("CreateTime"),
        ),
        (
            format!("{head}<ComponentVerifyTicket>t</ComponentVerifyTicket>"),
            MsgCryptError::MissingField("InfoType"),
        ),
        (
            format!("{head}<InfoType>component_verify_ticket</InfoType>"),
            MsgCryptError::MissingField("ComponentVerifyTicket"),
        ),
        (
            format!(
                "{head}<InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket></ComponentVerifyTicket>"
            ),
            MsgCryptError::BadField("ComponentVerifyTicket"),
        ),
        (
            format!(
                "{head}<InfoType>component_verify_ticket</InfoType><ComponentVerifyTicket>a b</ComponentVerifyTicket>"
            ),
            MsgCryptError::BadField("ComponentVerifyTicket"),
        ),
        (
            format!("{head}<InfoType>unauthorized</InfoType>"),
            MsgCryptError::MissingField("AuthorizerAppid"),
        ),
        (
            format!(
                "{head}<InfoType>authorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid>\
                 <AuthorizationCodeExpiredTime>2</AuthorizationCodeExpiredTime>"
            ),
            MsgCryptError::MissingField("AuthorizationCode"),
        ),
        (
            format!(
                "{head}<InfoType>authorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid>\
                 <AuthorizationCode>c</AuthorizationCode><PreAuthCode></PreAuthCode>\
                 <AuthorizationCodeExpiredTime>2</AuthorizationCodeExpiredTime>"
            ),
            MsgCryptError::BadField("PreAuthCode"),
        ),
    ] {
        assert_eq!(base(&fields), Err(error), "{fields}");
    }
}

/// A verify ticket as the open platform sends it: encrypted for the component appid, in an
/// envelope with `<AppId>`.
#[test]
fn a_verify_ticket_push_opens_end_to_end() {
    let component = MsgCrypt::new(TOKEN, KEY, "wxcomponent").unwrap();
    let inner = "<xml><AppId><![CDATA[wxcomponent]]></AppId><CreateTime>1413192605</CreateTime>\
                 <InfoType><![CDATA[component_verify_ticket]]></InfoType>\
                 <ComponentVerifyTicket><![CDATA[ticket@@@t]]></ComponentVerifyTicket></xml>";
    let sealed = component.seal(inner, 1_413_192_605, "1234").unwrap();
    let body = format!(
        "<xml><AppId><![CDATA[wxcomponent]]></AppId><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        sealed.encrypt
    );
    let fields = component
        .open_envelope(&sealed.msg_signature, "1413192605", "1234", body.as_bytes())
        .unwrap();
    assert!(matches!(
        ComponentPush::from_fields(&fields),
        Ok(ComponentPush::VerifyTicket { ticket, .. }) if ticket.expose() == "ticket@@@t"
    ));
    // The same push to an official account's crypt, same token and key: not its receive id.
    assert_eq!(
        crypt().open_envelope(&sealed.msg_signature, "1413192605", "1234", body.as_bytes()),
        Err(MsgCryptError::WrongReceiveId)
    );
}

#[test]
fn fuzz_seeds_hold() {
    for seed in [
        &b""[..],
        b"<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>unauthorized</InfoType><AuthorizerAppid>wxa</AuthorizerAppid></xml>",
        b"<xml><AppId>wxc</AppId><CreateTime>1</CreateTime><InfoType>authorized</InfoType></xml>",
    ] {
        fuzz(seed);
    }
}
