//! The embedded bus: a durable partitioned log in one SQLite file.
//!
//! Appends go through one writer task that groups concurrent sends into a single
//! transaction (group commit) with `synchronous = FULL`, so a `send` that returned
//! `Ok` survives a crash of the process or the machine, at the cost of one fsync
//! per group rather than per request. Offsets per partition are dense and
//! never reused, even after old records are trimmed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row, Sqlite};
use tokio::sync::{mpsc, oneshot, watch};

use super::{BusConsumer, BusError, BusProducer, BusRecord, ConsumerEvent, OutgoingRecord};

/// Sends waiting for the writer beyond this many are refused with `BusError::Full`.
const QUEUE_DEPTH: usize = 4096;
/// Most records one group-commit transaction takes.
const MAX_GROUP_RECORDS: usize = 50_000;
/// Rows per multi-row INSERT statement (4 parameters each, well under SQLite's limit).
const INSERT_CHUNK: usize = 2_000;

struct SendRequest {
    records: Vec<OutgoingRecord>,
    done: oneshot::Sender<Result<(), BusError>>,
}

/// A durable, partitioned log for `pulse up` and tests.
pub struct SqliteBus {
    pool: SqlitePool,
    partitions: u32,
    queue: mpsc::Sender<SendRequest>,
    /// Next offset per partition, published after each commit so consumers wake up.
    ends: watch::Receiver<Vec<u64>>,
}

impl SqliteBus {
    /// Opens (or creates) the log at `path` with `partitions` partitions.
    ///
    /// An existing log keeps the partition count it was created with; asking for
    /// another is an error, because moving series between partitions would break
    /// their ordering.
    pub async fn open(path: &Path, partitions: u32) -> Result<Arc<SqliteBus>, BusError> {
        if partitions == 0 {
            return Err(BusError::Other("a bus needs at least one partition".into()));
        }
        let pool = crate::sqlite::open_pool(path, "bus")
            .await
            .map_err(BusError::Unavailable)?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await.map_err(other)?;
        }
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT value FROM bus_meta WHERE name = 'partitions'")
                .fetch_optional(&pool)
                .await
                .map_err(other)?;
        match stored {
            Some(n) if n != i64::from(partitions) => {
                return Err(BusError::Other(format!(
                    "the bus at {} was created with {n} partitions, but {partitions} are configured; \
                     set bus.partitions = {n} or start from an empty data directory",
                    path.display()
                )));
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO bus_meta (name, value) VALUES ('partitions', ?)")
                    .bind(i64::from(partitions))
                    .execute(&pool)
                    .await
                    .map_err(other)?;
            }
        }
        let mut ends = vec![0u64; partitions as usize];
        for row in sqlx::query("SELECT partition, next_offset FROM bus_partitions")
            .fetch_all(&pool)
            .await
            .map_err(other)?
        {
            let p: i64 = row.get(0);
            if let Some(end) = ends.get_mut(p as usize) {
                *end = row.get::<i64, _>(1) as u64;
            }
        }
        let (ends_tx, ends_rx) = watch::channel(ends.clone());
        let (queue, requests) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(write_loop(
            pool.clone(),
            partitions,
            ends,
            requests,
            ends_tx,
        ));
        Ok(Arc::new(SqliteBus {
            pool,
            partitions,
            queue,
            ends: ends_rx,
        }))
    }

    /// The number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// A consumer of every partition. The embedded bus has one consumer group, so
    /// all partitions are assigned to each consumer created here.
    pub fn consumer(self: &Arc<Self>) -> SqliteConsumer {
        SqliteConsumer {
            bus: Arc::clone(self),
            positions: BTreeMap::new(),
            announced: false,
            next_partition: 0,
            paused: false,
        }
    }
}

const SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS bus_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bus_records (partition INTEGER NOT NULL, offset INTEGER NOT NULL, \
     key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (partition, offset)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS bus_partitions (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS bus_commits (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL)",
];

fn other(e: sqlx::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

/// The single writer: takes every queued send, writes them in one transaction,
/// then answers them all.
async fn write_loop(
    pool: SqlitePool,
    partitions: u32,
    mut ends: Vec<u64>,
    mut requests: mpsc::Receiver<SendRequest>,
    published: watch::Sender<Vec<u64>>,
) {
    while let Some(first) = requests.recv().await {
        let mut group = vec![first];
        let mut count = group[0].records.len();
        while count < MAX_GROUP_RECORDS {
            match requests.try_recv() {
                Ok(next) => {
                    count += next.records.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let mut next_ends = ends.clone();
        let result = append(&pool, partitions, &mut next_ends, &group).await;
        if result.is_ok() {
            ends = next_ends;
            published.send_replace(ends.clone());
        } else if let Err(e) = &result {
            tracing::warn!(message = "Embedded bus could not append a batch.", error = %e, records = count);
        }
        for request in group {
            let answer = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| BusError::Unavailable(e.to_string()));
            let _ = request.done.send(answer);
        }
    }
}

async fn append(
    pool: &SqlitePool,
    partitions: u32,
    ends: &mut [u64],
    group: &[SendRequest],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = group.iter().flat_map(|r| &r.records).map(|record| {
        let partition = (record.key % u64::from(partitions)) as usize;
        let offset = ends[partition];
        ends[partition] += 1;
        (
            partition as i64,
            offset as i64,
            record.key.to_be_bytes(),
            &record.value,
        )
    });
    let rows: Vec<_> = rows.collect();
    for chunk in rows.chunks(INSERT_CHUNK) {
        let mut insert =
            QueryBuilder::<Sqlite>::new("INSERT INTO bus_records (partition, offset, key, value) ");
        insert.push_values(chunk, |mut b, (p, o, k, v)| {
            b.push_bind(*p)
                .push_bind(*o)
                .push_bind(&k[..])
                .push_bind(&v[..]);
        });
        insert.build().execute(&mut *tx).await?;
    }
    let mut upsert =
        QueryBuilder::<Sqlite>::new("INSERT INTO bus_partitions (partition, next_offset) ");
    upsert.push_values(ends.iter().enumerate(), |mut b, (p, end)| {
        b.push_bind(p as i64).push_bind(*end as i64);
    });
    upsert.push(" ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset");
    upsert.build().execute(&mut *tx).await?;
    tx.commit().await
}

#[async_trait]
impl BusProducer for SqliteBus {
    async fn send(&self, records: Vec<OutgoingRecord>) -> Result<(), BusError> {
        if records.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.queue
            .try_send(SendRequest { records, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => BusError::Full,
                mpsc::error::TrySendError::Closed(_) => {
                    BusError::Unavailable("the bus writer has stopped".into())
                }
            })?;
        answer
            .await
            .map_err(|_| BusError::Unavailable("the bus writer has stopped".into()))?
    }

    async fn ready(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(other)
    }
}

/// A consumer of all partitions of a [`SqliteBus`].
pub struct SqliteConsumer {
    bus: Arc<SqliteBus>,
    positions: BTreeMap<u32, u64>,
    announced: bool,
    /// Where the next fetch starts, so no partition starves the others.
    next_partition: u32,
    /// Hands out no records (see [`BusConsumer::pause`]).
    paused: bool,
}

impl SqliteConsumer {
    async fn fetch(&mut self, max: usize) -> Result<Vec<BusRecord>, BusError> {
        let ends = self.bus.ends.borrow().clone();
        let mut records = Vec::new();
        let n = self.bus.partitions;
        for i in 0..n {
            let partition = (self.next_partition + i) % n;
            let from = self.positions.get(&partition).copied().unwrap_or(0);
            if from >= ends[partition as usize] || records.len() >= max {
                continue;
            }
            let rows = sqlx::query(
                "SELECT offset, key, value FROM bus_records WHERE partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
            )
            .bind(i64::from(partition))
            .bind(from as i64)
            .bind((max - records.len()) as i64)
            .fetch_all(&self.bus.pool)
            .await
            .map_err(other)?;
            for row in rows {
                let offset = row.get::<i64, _>(0) as u64;
                self.positions.insert(partition, offset + 1);
                records.push(BusRecord {
                    partition,
                    offset,
                    key: row.get(1),
                    value: row.get(2),
                });
            }
        }
        self.next_partition = (self.next_partition + 1) % n;
        Ok(records)
    }
}

#[async_trait]
impl BusConsumer for SqliteConsumer {
    async fn next(&mut self, max: usize, wait: Duration) -> Result<ConsumerEvent, BusError> {
        if !self.announced {
            self.announced = true;
            let committed = sqlx::query("SELECT partition, next_offset FROM bus_commits")
                .fetch_all(&self.bus.pool)
                .await
                .map_err(other)?;
            for row in committed {
                self.positions
                    .insert(row.get::<i64, _>(0) as u32, row.get::<i64, _>(1) as u64);
            }
            return Ok(ConsumerEvent::Assigned((0..self.bus.partitions).collect()));
        }
        if self.paused {
            tokio::time::sleep(wait).await;
            return Ok(ConsumerEvent::Idle);
        }
        let mut ends = self.bus.ends.clone();
        ends.mark_unchanged();
        let records = self.fetch(max).await?;
        if !records.is_empty() {
            return Ok(ConsumerEvent::Records(records));
        }
        if tokio::time::timeout(wait, ends.changed()).await.is_err() {
            return Ok(ConsumerEvent::Idle);
        }
        let records = self.fetch(max).await?;
        Ok(if records.is_empty() {
            ConsumerEvent::Idle
        } else {
            ConsumerEvent::Records(records)
        })
    }

    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        if partition >= self.bus.partitions {
            return Err(BusError::Other(format!(
                "partition {partition} does not exist"
            )));
        }
        self.positions.insert(partition, offset);
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), BusError> {
        let mut tx = self.bus.pool.begin().await.map_err(other)?;
        for &(partition, next) in offsets {
            sqlx::query(
                "INSERT INTO bus_commits (partition, next_offset) VALUES (?, ?) \
                 ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset",
            )
            .bind(i64::from(partition))
            .bind(next as i64)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            // Records below the committed offset are never read again: trim them.
            sqlx::query("DELETE FROM bus_records WHERE partition = ? AND offset < ?")
                .bind(i64::from(partition))
                .bind(next as i64)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
        }
        tx.commit().await.map_err(other)
    }

    async fn pause(&mut self, paused: bool) -> Result<(), BusError> {
        self.paused = paused;
        Ok(())
    }

    async fn end_offsets(&self) -> Result<Vec<(u32, u64)>, BusError> {
        let ends = self.bus.ends.borrow();
        Ok(ends
            .iter()
            .enumerate()
            .map(|(p, e)| (p as u32, *e))
            .collect())
    }
}
