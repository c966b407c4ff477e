//! StatsD / DogStatsD over UDP. Datagrams are parsed as they arrive
//! (`crate::parse::statsd`) and fed to the [`Aggregator`]; counters, gauges,
//! sets and one sketch per timer series become points every
//! `statsd.flush_interval`; stamped (`|T`) lines are written in small
//! batches as they come (see `crate::aggregate`).
//!
//! UDP has no answer, so a bad line can only be counted
//! (`pulse_sidecar_points_rejected_total{receiver="statsd",reason}`) and logged
//! at debug level.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pulse_server::CancellationToken;
use tokio::net::UdpSocket;

use super::Intake;
use crate::aggregate::Aggregator;
use crate::config::StatsdConfig;
use crate::parse::statsd::parse_packet;

const RECEIVER: &str = "statsd";

/// Samples are written once this many are waiting ...
const SAMPLE_BATCH: usize = 2_000;
/// ... or this often, whichever comes first.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Binds the StatsD socket, asking the kernel for a large receive buffer so a
/// burst survives while the sidecar is busy writing.
pub fn bind(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(receive_buffer) {
        tracing::warn!(message = "Cannot enlarge the StatsD receive buffer.", %error);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives until `stop`, then flushes what it holds.
pub async fn run(
    socket: UdpSocket,
    intake: Arc<Intake>,
    config: StatsdConfig,
    stop: CancellationToken,
) {
    let mut aggregator = Aggregator::new(config.max_series);
    let mut datagram = vec![0u8; MAX_DATAGRAM];
    let mut flush = tokio::time::interval(config.flush_interval);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush.tick().await;
    let mut samples = tokio::time::interval(SAMPLE_INTERVAL);
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut datagram) => match received {
                Ok((len, _)) => {
                    intake.metrics.statsd_packets.inc();
                    take_packet(&mut aggregator, &datagram[..len], &intake);
                    if aggregator.pending_samples() >= SAMPLE_BATCH {
                        write_samples(&mut aggregator, &intake).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(message = "StatsD receive failed.", %error);
                }
            },
            _ = samples.tick() => write_samples(&mut aggregator, &intake).await,
            _ = flush.tick() => write_aggregates(&mut aggregator, &intake).await,
            () = stop.cancelled() => break,
        }
    }
    write_samples(&mut aggregator, &intake).await;
    write_aggregates(&mut aggregator, &intake).await;
}

fn take_packet(aggregator: &mut Aggregator, packet: &[u8], intake: &Intake) {
    for line in parse_packet(packet) {
        let outcome = line.and_then(|line| aggregator.add(line));
        if let Err(rejection) = outcome {
            intake.metrics.rejected(RECEIVER, rejection.reason, 1);
            tracing::debug!(message = "StatsD line rejected.", reason = rejection.reason, detail = %rejection.message);
        }
    }
}

async fn write_samples(aggregator: &mut Aggregator, intake: &Intake) {
    if aggregator.pending_samples() == 0 {
        return;
    }
    let samples = aggregator.take_samples();
    write(intake, samples).await;
}

async fn write_aggregates(aggregator: &mut Aggregator, intake: &Intake) {
    let points = aggregator.flush(pulse_core::now_ms());
    write(intake, points).await;
}

async fn write(intake: &Intake, points: Vec<pulse_core::validate::UncheckedPoint>) {
    if points.is_empty() {
        return;
    }
    let (valid, _) = intake.admit(RECEIVER, points, pulse_core::now_ms());
    if let Err(error) = intake.write(RECEIVER, valid).await {
        tracing::warn!(message = "StatsD points could not be buffered and are lost.", %error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::testing;

    #[tokio::test]
    async fn datagrams_become_points_and_everything_is_flushed_at_stop() {
        let fixture = testing::intake();
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = CancellationToken::new();
        let config = StatsdConfig {
            flush_interval: Duration::from_secs(3600),
            ..StatsdConfig::default()
        };
        let task = tokio::spawn(run(
            socket,
            Arc::clone(&fixture.intake),
            config,
            stop.clone(),
        ));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(
                b"hits:1|c\nhits:2|c|#env:a\nlat:5|ms\nlat:7|ms\nbad line\ntemp:3|g",
                addr,
            )
            .await
            .unwrap();
        // Wait for the datagram to be taken.
        for _ in 0..100 {
            if fixture.intake.metrics.statsd_packets.get() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.unwrap();
        // One sketch of lat + hits{} + hits{env} + temp.
        assert_eq!(fixture.buffer.depth().1, 4);
        let rejected = fixture
            .intake
            .metrics
            .points_rejected
            .get_or_create(&crate::metrics::RejectLabels {
                receiver: RECEIVER,
                reason: "malformed",
            })
            .get();
        assert_eq!(rejected, 1);
    }
}
