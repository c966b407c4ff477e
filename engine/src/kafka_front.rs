//! A TLS and SASL front for librdkafka's mock cluster, for the Kafka security
//! tests.
//!
//! The mock cluster speaks plain text only and knows no SASL (its handlers
//! have neither SaslHandshake nor SaslAuthenticate). This front listens on a
//! loopback port, does what a secured broker does on its side of each
//! connection (the TLS handshake with a certificate made in the test and,
//! optionally, a required client certificate; then SASL PLAIN or SCRAM
//! checked against a user and password of the test's own) and relays the
//! Kafka requests to the one mock broker behind it. It rewrites three answers
//! on the way back: Metadata and FindCoordinator, so the broker (and group
//! coordinator) is advertised at the front (`localhost:<front port>`) rather
//! than at its own plain-text port, and, with SASL, ApiVersions, so it lists
//! the two SASL requests this front answers. The client under test is the real librdkafka doing real TLS and
//! SASL; only the broker's side of them is this code.

use std::io;
use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

const METADATA: i16 = 3;
const FIND_COORDINATOR: i16 = 10;
const SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const SASL_AUTHENTICATE: i16 = 36;
/// Kafka's error codes for a mechanism it does not offer and refused credentials.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// Largest frame the front relays; Kafka's own default socket limit.
const MAX_FRAME: usize = 100 << 20;

/// The user the front's SASL accepts.
#[derive(Clone)]
pub(crate) struct SaslUser {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub(crate) mechanism: &'static str,
    pub(crate) user: String,
    pub(crate) password: String,
}

/// A running front; stops accepting when dropped.
pub(crate) struct KafkaFront {
    pub(crate) port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KafkaFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KafkaFront {
    /// A front for the mock broker at `broker` (`127.0.0.1:<port>`), with TLS
    /// if `tls` is given and SASL if `sasl` is.
    pub(crate) async fn start(
        broker: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        sasl: Option<SaslUser>,
    ) -> KafkaFront {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the front");
        let port = listener.local_addr().expect("front address").port();
        let broker = broker.to_string();
        let acceptor = tls.map(TlsAcceptor::from);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (broker, sasl, acceptor) = (broker.clone(), sasl.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // A refused handshake or a closed connection ends it; the
                    // client reports why, which is what the tests check.
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(socket).await {
                            Ok(tls) => relay(tls, &broker, sasl, port).await,
                            Err(e) => Err(e),
                        },
                        None => relay(socket, &broker, sasl, port).await,
                    };
                });
            }
        });
        KafkaFront { port, task }
    }
}

/// One client connection: SASL first if asked for, then requests relayed to
/// the broker and answers back, in order (Kafka answers a connection's
/// requests in the order they came).
async fn relay<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    client: S,
    broker: &str,
    sasl: Option<SaslUser>,
    port: u16,
) -> io::Result<()> {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let upstream = TcpStream::connect(broker).await?;
    let (mut from_broker, mut to_broker) = upstream.into_split();
    if let Some(user) = sasl {
        authenticate(
            &mut from_client,
            &mut to_client,
            &mut from_broker,
            &mut to_broker,
            &user,
        )
        .await?;
    }
    let (sent, answered) = mpsc::unbounded_channel::<(i16, i16)>();
    tokio::try_join!(
        requests(&mut from_client, &mut to_broker, sent),
        answers(&mut from_broker, &mut to_client, answered, port),
    )
    .map(|_| ())
}

/// Client to broker, noting each request's key and version for its answer.
async fn requests<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from_client: &mut R,
    to_broker: &mut W,
    sent: mpsc::UnboundedSender<(i16, i16)>,
) -> io::Result<()> {
    loop {
        let frame = read_frame(from_client).await?;
        let (key, version, _) = request_header(&frame)?;
        sent.send((key, version))
            .map_err(|_| broken("answer side gone"))?;
        write_frame(to_broker, &frame).await?;
    }
}

/// Broker to client, in order, Metadata and FindCoordinator rewritten to
/// advertise the front.
async fn answers<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from_broker: &mut R,
    to_client: &mut W,
    mut answered: mpsc::UnboundedReceiver<(i16, i16)>,
    port: u16,
) -> io::Result<()> {
    loop {
        let mut frame = read_frame(from_broker).await?;
        let (key, version) = answered.recv().await.ok_or_else(|| broken("no request"))?;
        match key {
            METADATA => frame = advertise_front(&frame, version, port)?,
            FIND_COORDINATOR => frame = coordinator_at_front(&frame, version, port)?,
            _ => {}
        }
        write_frame(to_client, &frame).await?;
    }
}

/// The SASL exchange, on the broker's side. ApiVersions may come first and
/// goes to the broker; anything else before authentication ends the connection.
async fn authenticate<R, W, BR, BW>(
    from_client: &mut R,
    to_client: &mut W,
    from_broker: &mut BR,
    to_broker: &mut BW,
    user: &SaslUser,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let mut scram: Option<Scram> = None;
    loop {
        let frame = read_frame(from_client).await?;
        let (key, version, body_at) = request_header(&frame)?;
        let correlation = &frame[4..8];
        let mut answer = correlation.to_vec();
        match key {
            API_VERSIONS => {
                write_frame(to_broker, &frame).await?;
                let reply = read_frame(from_broker).await?;
                write_frame(to_client, &offer_sasl(&reply, version)?).await?;
                continue;
            }
            SASL_HANDSHAKE => {
                let mut body = Reader::new(&frame[body_at..]);
                let asked = body.string()?;
                let code = if asked == user.mechanism {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                answer.extend(code.to_be_bytes());
                answer.extend(1i32.to_be_bytes());
                put_string(&mut answer, user.mechanism);
                write_frame(to_client, &answer).await?;
                if code != 0 {
                    return Err(broken("mechanism not offered"));
                }
            }
            SASL_AUTHENTICATE => {
                let message = Reader::new(&frame[body_at..]).bytes()?.to_vec();
                let step = match user.mechanism {
                    "PLAIN" => plain(&message, user),
                    _ => match scram.take() {
                        None => Scram::first(&message, user).map(|(state, reply)| {
                            scram = Some(state);
                            Step::More(reply)
                        }),
                        Some(state) => state.last(&message, user),
                    },
                };
                let (code, error, reply, done) = match step {
                    Some(Step::More(reply)) => (0i16, None, reply, false),
                    Some(Step::Done(reply)) => (0, None, reply, true),
                    None => (
                        SASL_AUTHENTICATION_FAILED,
                        Some(format!(
                            "Authentication failed during authentication due to invalid \
                             credentials with SASL mechanism {}",
                            user.mechanism
                        )),
                        Vec::new(),
                        false,
                    ),
                };
                answer.extend(code.to_be_bytes());
                match error {
                    Some(text) => put_string(&mut answer, &text),
                    None => answer.extend((-1i16).to_be_bytes()),
                }
                answer.extend(i32::try_from(reply.len()).expect("short").to_be_bytes());
                answer.extend(&reply);
                if version >= 1 {
                    answer.extend(0i64.to_be_bytes());
                }
                write_frame(to_client, &answer).await?;
                if code != 0 {
                    return Err(broken("credentials refused"));
                }
                if done {
                    return Ok(());
                }
            }
            _ => return Err(broken("a request before authentication")),
        }
    }
}

enum Step {
    More(Vec<u8>),
    Done(Vec<u8>),
}

/// PLAIN: `authzid NUL user NUL password` in one message.
fn plain(message: &[u8], user: &SaslUser) -> Option<Step> {
    let mut parts = message.split(|b| *b == 0);
    let (_authzid, name, password) = (parts.next()?, parts.next()?, parts.next()?);
    (name == user.user.as_bytes() && password == user.password.as_bytes())
        .then(|| Step::Done(Vec::new()))
}

/// The server side of SCRAM (RFC 5802) between its two client messages.
struct Scram {
    client_first_bare: String,
    server_first: String,
    nonce: String,
    salt: Vec<u8>,
    known_user: bool,
}

const SCRAM_ITERATIONS: u32 = 4096;

impl Scram {
    fn first(message: &[u8], user: &SaslUser) -> Option<(Scram, Vec<u8>)> {
        let text = std::str::from_utf8(message).ok()?;
        let bare = text.strip_prefix("n,,")?;
        let name = attribute(bare, "n")?;
        let client_nonce = attribute(bare, "r")?;
        let rng = ring::rand::SystemRandom::new();
        let (mut salt, mut ours) = (vec![0u8; 16], [0u8; 18]);
        rng.fill(&mut salt).ok()?;
        rng.fill(&mut ours).ok()?;
        let nonce = format!("{client_nonce}{}", B64.encode(ours));
        let server_first = format!("r={nonce},s={},i={SCRAM_ITERATIONS}", B64.encode(&salt));
        let reply = server_first.clone().into_bytes();
        let state = Scram {
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
            salt,
            known_user: name == user.user,
        };
        Some((state, reply))
    }

    fn last(self, message: &[u8], user: &SaslUser) -> Option<Step> {
        let (hmac_algorithm, pbkdf2_algorithm, digest_algorithm) = match user.mechanism {
            "SCRAM-SHA-256" => (
                hmac::HMAC_SHA256,
                pbkdf2::PBKDF2_HMAC_SHA256,
                &digest::SHA256,
            ),
            _ => (
                hmac::HMAC_SHA512,
                pbkdf2::PBKDF2_HMAC_SHA512,
                &digest::SHA512,
            ),
        };
        let text = std::str::from_utf8(message).ok()?;
        let (without_proof, proof) = text.rsplit_once(",p=")?;
        if attribute(without_proof, "r")? != self.nonce || !self.known_user {
            return None;
        }
        let proof = B64.decode(proof).ok()?;
        let mut salted = vec![0u8; digest_algorithm.output_len()];
        let iterations = NonZeroU32::new(SCRAM_ITERATIONS)?;
        pbkdf2::derive(
            pbkdf2_algorithm,
            iterations,
            &self.salt,
            user.password.as_bytes(),
            &mut salted,
        );
        let salted = hmac::Key::new(hmac_algorithm, &salted);
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(digest_algorithm, client_key.as_ref());
        let signature = hmac::sign(
            &hmac::Key::new(hmac_algorithm, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        if proof.len() != signature.as_ref().len() {
            return None;
        }
        let recovered: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        if digest::digest(digest_algorithm, &recovered).as_ref() != stored_key.as_ref() {
            return None;
        }
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hmac_algorithm, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        Some(Step::Done(
            format!("v={}", B64.encode(server_signature.as_ref())).into_bytes(),
        ))
    }
}

/// The value of `name=` in a SCRAM message's comma-separated attributes.
fn attribute<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

/// An ApiVersions answer that also lists SaslHandshake and SaslAuthenticate
/// (versions 0 to 1). An error answer goes back unchanged.
fn offer_sasl(reply: &[u8], version: i16) -> io::Result<Vec<u8>> {
    let flexible = version >= 3;
    let mut r = Reader::new(reply);
    r.skip(4)?; // correlation id; ApiVersions answers always have header v0
    if r.i16()? != 0 {
        return Ok(reply.to_vec());
    }
    let count = if flexible {
        r.compact_len()?
    } else {
        r.len_i32()?
    };
    let entries_at = r.at;
    for _ in 0..count {
        r.skip(6)?;
        if flexible {
            r.tagged_fields()?;
        }
    }
    let mut out = reply[..6].to_vec();
    if flexible {
        put_uvarint(&mut out, u64::try_from(count + 3).expect("small"));
    } else {
        out.extend(i32::try_from(count + 2).expect("small").to_be_bytes());
    }
    out.extend(&reply[entries_at..r.at]);
    for key in [SASL_HANDSHAKE, SASL_AUTHENTICATE] {
        out.extend(key.to_be_bytes());
        out.extend(0i16.to_be_bytes());
        out.extend(1i16.to_be_bytes());
        if flexible {
            out.push(0);
        }
    }
    out.extend(&reply[r.at..]);
    Ok(out)
}

/// A Metadata answer whose brokers are all advertised at the front.
fn advertise_front(reply: &[u8], version: i16, port: u16) -> io::Result<Vec<u8>> {
    let flexible = version >= 9;
    let mut r = Reader::new(reply);
    r.skip(4)?;
    if flexible {
        r.tagged_fields()?;
    }
    if version >= 3 {
        r.skip(4)?; // throttle time
    }
    let mut out = reply[..r.at].to_vec();
    let count = if flexible {
        r.compact_len()?
    } else {
        r.len_i32()?
    };
    if flexible {
        put_uvarint(&mut out, u64::try_from(count + 1).expect("small"));
    } else {
        out.extend(i32::try_from(count).expect("small").to_be_bytes());
    }
    for _ in 0..count {
        let node = r.take(4)?.to_vec();
        if flexible {
            let n = r.compact_len()?;
            r.skip(n)?;
        } else {
            r.string()?;
        }
        r.skip(4)?; // the broker's own port
        let rest_at = r.at;
        if version >= 1 {
            if flexible {
                let n = r.compact_len_nullable()?;
                r.skip(n)?;
            } else {
                r.nullable_string()?;
            }
        }
        if flexible {
            r.tagged_fields()?;
        }
        out.extend(node);
        if flexible {
            put_uvarint(&mut out, "localhost".len() as u64 + 1);
            out.extend(b"localhost");
        } else {
            put_string(&mut out, "localhost");
        }
        out.extend(i32::from(port).to_be_bytes());
        out.extend(&reply[rest_at..r.at]);
    }
    out.extend(&reply[r.at..]);
    Ok(out)
}

/// A FindCoordinator answer (versions 0 to 3, all the mock speaks) naming the
/// front as the coordinator.
fn coordinator_at_front(reply: &[u8], version: i16, port: u16) -> io::Result<Vec<u8>> {
    let flexible = version >= 3;
    let mut r = Reader::new(reply);
    r.skip(4)?;
    if flexible {
        r.tagged_fields()?;
    }
    if version >= 1 {
        r.skip(4)?; // throttle time
    }
    r.skip(2)?; // error code
    if version >= 1 {
        if flexible {
            let n = r.compact_len_nullable()?;
            r.skip(n)?;
        } else {
            r.nullable_string()?;
        }
    }
    r.skip(4)?; // node id
    let mut out = reply[..r.at].to_vec();
    if flexible {
        let n = r.compact_len()?;
        r.skip(n)?;
        put_uvarint(&mut out, "localhost".len() as u64 + 1);
        out.extend(b"localhost");
    } else {
        r.string()?;
        put_string(&mut out, "localhost");
    }
    r.skip(4)?;
    out.extend(i32::from(port).to_be_bytes());
    out.extend(&reply[r.at..]);
    Ok(out)
}

/// Api key, version and where the body starts, of a request (header v1 or v2).
fn request_header(frame: &[u8]) -> io::Result<(i16, i16, usize)> {
    let mut r = Reader::new(frame);
    let (key, version) = (r.i16()?, r.i16()?);
    r.skip(4)?;
    r.nullable_string()?; // client id
    // SASL requests, the only bodies read here, use header v1 (no tags).
    Ok((key, version, r.at))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| broken("frame too short"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        self.take(n).map(|_| ())
    }

    fn i16(&mut self) -> io::Result<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn i32(&mut self) -> io::Result<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn len_i32(&mut self) -> io::Result<usize> {
        usize::try_from(self.i32()?).map_err(|_| broken("negative length"))
    }

    fn uvarint(&mut self) -> io::Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(broken("varint too long"))
    }

    fn compact_len(&mut self) -> io::Result<usize> {
        let n = self.uvarint()?;
        usize::try_from(n.checked_sub(1).ok_or_else(|| broken("null array"))?)
            .map_err(|_| broken("length"))
    }

    fn compact_len_nullable(&mut self) -> io::Result<usize> {
        let n = self.uvarint()?;
        usize::try_from(n.saturating_sub(1)).map_err(|_| broken("length"))
    }

    fn string(&mut self) -> io::Result<String> {
        let n = usize::try_from(self.i16()?).map_err(|_| broken("null string"))?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn nullable_string(&mut self) -> io::Result<()> {
        let n = self.i16()?;
        if let Ok(n) = usize::try_from(n) {
            self.skip(n)?;
        }
        Ok(())
    }

    fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = self.len_i32()?;
        self.take(n)
    }

    fn tagged_fields(&mut self) -> io::Result<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = usize::try_from(self.uvarint()?).map_err(|_| broken("length"))?;
            self.skip(size)?;
        }
        Ok(())
    }
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend(i16::try_from(text.len()).expect("short").to_be_bytes());
    out.extend(text.as_bytes());
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).expect("7 bits") | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).expect("7 bits"));
}

async fn read_frame<R: AsyncRead + Unpin>(from: &mut R) -> io::Result<Vec<u8>> {
    let size = usize::try_from(from.read_u32().await?).map_err(|_| broken("size"))?;
    if size > MAX_FRAME {
        return Err(broken("frame too large"));
    }
    let mut frame = vec![0u8; size];
    from.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame<W: AsyncWrite + Unpin>(to: &mut W, frame: &[u8]) -> io::Result<()> {
    to.write_u32(u32::try_from(frame.len()).map_err(|_| broken("size"))?)
        .await?;
    to.write_all(frame).await?;
    to.flush().await
}

fn broken(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}
