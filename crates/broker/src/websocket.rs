//! MQTT over WebSockets (MQTT 3.1.1 section 6): the HTTP upgrade, then the WebSocket's binary
//! frames as one byte stream, so a WebSocket client goes through the very same connection code
//! (limits, authentication, access control, flow control) as a TCP one.
//!
//! The upgrade accepts any path (`/mqtt` is what clients use by convention, as with
//! Mosquitto) and answers with the subprotocol `mqtt` when the client offers it (every MQTT
//! client does; the older `mqttv3.1` name is accepted too). Text frames are a protocol
//! violation (section 6): `ws_stream_tungstenite` closes the connection on one.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

/// The subprotocol names of MQTT over WebSockets, preferred first.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// A WebSocket connection read and written as the bytes of its binary frames.
pub(crate) type Stream<S> = WsStream<TokioAdapter<S>>;

/// Answers the HTTP upgrade on `stream`. Fails on anything that is not a WebSocket handshake.
pub(crate) async fn accept<S>(stream: S) -> Result<Stream<S>, async_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let socket = async_tungstenite::tokio::accept_hdr_async(stream, choose_subprotocol).await?;
    Ok(WsStream::new(socket))
}

/// The handshake callback: picks `mqtt` (or `mqttv3.1`) among the subprotocols the client
/// offers. A client that offers none still gets through; one that offers only others gets
/// no subprotocol back and, by RFC 6455, gives up itself.
#[allow(clippy::result_large_err)] // the signature is tungstenite's `Callback`
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if let Some(chosen) = offered(request).and_then(|offered| {
        SUBPROTOCOLS
            .into_iter()
            .find(|name| offered.iter().any(|o| o == name))
    }) {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
    }
    Ok(response)
}

/// The subprotocols a request offers (comma-separated, possibly over several headers).
fn offered(request: &Request) -> Option<Vec<String>> {
    let values = request.headers().get_all("Sec-WebSocket-Protocol");
    let names: Vec<String> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect();
    (!names.is_empty()).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri("/mqtt");
        for p in protocols {
            builder = builder.header("Sec-WebSocket-Protocol", *p);
        }
        builder.body(()).unwrap()
    }

    fn chosen(protocols: &[&str]) -> Option<String> {
        let response = choose_subprotocol(&request(protocols), Response::new(())).unwrap();
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn mqtt_is_chosen_among_the_offered_subprotocols() {
        assert_eq!(chosen(&["mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["wamp, mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["mqttv3.1"]).as_deref(), Some("mqttv3.1"));
        assert_eq!(chosen(&["mqttv3.1", "mqtt"]).as_deref(), Some("mqtt"));
    }

    #[test]
    fn no_subprotocol_is_claimed_that_was_not_offered() {
        assert_eq!(chosen(&[]), None);
        assert_eq!(chosen(&["wamp"]), None);
    }
}
