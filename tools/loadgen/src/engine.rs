//! The sending side: one single-threaded tokio runtime per core, each owning its connections,
//! its slice of the schedule and its histograms.
//!
//! Nothing is shared per request: no channels, no locks, no atomics beyond reading the stop flag.
//! Once a second each core hands its interval figures to the aggregator (the main thread) for
//! the progress line and the time series; the full histograms are merged once, at the end.
//!
//! Open model: request k is due at `plan.time_of(k)`; core c owns k ≡ c (mod cores). A
//! dispatcher task sleeps on a timerfd (tokio's timer wheel has 1 ms granularity, which would
//! show up as ~0.5 ms of schedule lag on every request), queues every due ticket and wakes idle
//! connection tasks, opening new connections up to the core's share of `max_connections`.
//! Latency counts from the intended send time, so a stalled server cannot hide its stall
//! (coordinated omission); service time (actual send to last byte) and schedule lag (actual
//! send minus intended) are recorded beside it.
//!
//! Closed model: N connections each send their next request when the last one ends (plus think
//! time). The raw latency is what each request saw; the report adds the corrected figure.

use crate::http1::WireConnection;
use crate::plan::{EndpointPicker, RatePlan};
use crate::scenario::{Client, Endpoint, Load, Scenario};
use crate::stats::{CoreStats, FailureKind, IntervalStats, Outcome};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc};

pub struct RunSetup {
    pub scenario: Arc<Scenario>,
    pub addr: SocketAddr,
    pub cores: usize,
    pub stop: Arc<AtomicBool>,
}

pub struct RunOutput {
    pub cores: Vec<CoreStats>,
    pub started: Instant,
    /// When the plan (or the closed-model duration) ended; drain time is not counted.
    pub load_ended: Instant,
    pub finished: Instant,
    pub cpu: CpuUse,
}

/// CPU the whole generator process used during the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub total: Duration,
    pub user: Duration,
}

impl CpuUse {
    fn now() -> CpuUse {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let total = Duration::new(t.tv_sec.max(0) as u64, t.tv_nsec.clamp(0, 999_999_999) as u32);
        CpuUse { total, user: user_cpu().unwrap_or_default() }
    }

    fn since(self, before: CpuUse) -> CpuUse {
        CpuUse { total: self.total.saturating_sub(before.total), user: self.user.saturating_sub(before.user) }
    }
}

/// User-mode CPU from /proc (in clock ticks of 10 ms, which is fine over a run of seconds).
fn user_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces, hence the last ')').
    let after = &stat[stat.rfind(')')? + 2..];
    let utime: u64 = after.split_whitespace().nth(11)?.parse().ok()?;
    Some(Duration::from_millis(utime * 10))
}

/// Runs the load on `cores` threads; `intervals` receives each core's seconds as they finish.
pub fn run(setup: RunSetup, intervals: mpsc::UnboundedSender<IntervalStats>) -> io::Result<RunOutput> {
    let RunSetup { scenario, addr, cores, stop } = setup;
    // A short head start so every core's runtime is up before the first request is due.
    let started = Instant::now() + Duration::from_millis(20);
    let cpu_before = CpuUse::now();
    let mut handles = Vec::with_capacity(cores);
    for core in 0..cores {
        let scenario = Arc::clone(&scenario);
        let stop = Arc::clone(&stop);
        let intervals = intervals.clone();
        let handle = std::thread::Builder::new().name(format!("loadgen-core-{core}")).spawn(
            move || -> io::Result<CoreStats> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let local = tokio::task::LocalSet::new();
                let core_run = CoreRun { scenario, addr, core, cores, started, stop, intervals };
                local.block_on(&runtime, core_run.run())
            },
        )?;
        handles.push(handle);
    }
    drop(intervals);
    let mut stats = Vec::with_capacity(cores);
    for handle in handles {
        stats.push(handle.join().map_err(|_| io::Error::other("a generator core panicked"))??);
    }
    let finished = Instant::now();
    let cpu = CpuUse::now().since(cpu_before);
    let length = match &scenario.load {
        Load::Open { start_rps, stages } => RatePlan::new(*start_rps, stages).duration(),
        Load::Closed { duration, .. } => *duration,
    };
    Ok(RunOutput { cores: stats, started, load_ended: (started + length).min(finished), finished, cpu })
}

struct CoreRun {
    scenario: Arc<Scenario>,
    addr: SocketAddr,
    core: usize,
    cores: usize,
    started: Instant,
    stop: Arc<AtomicBool>,
    intervals: mpsc::UnboundedSender<IntervalStats>,
}

/// A request the dispatcher has made due.
struct Ticket {
    intended: Instant,
    endpoint: usize,
}

/// State one core's tasks share; single-threaded, so `Cell`/`RefCell` and no locks.
struct CoreState {
    queue: RefCell<VecDeque<Ticket>>,
    work: Notify,
    idle: Cell<usize>,
    connections: Cell<usize>,
    in_flight: Cell<u64>,
    dispatching: Cell<bool>,
    stats: RefCell<CoreStats>,
    interval: RefCell<IntervalStats>,
    warmup_end: Instant,
    timeout: Duration,
    open_model: bool,
    /// HTTP/2 connections this core's workers share (`--client h2`).
    h2: H2Pool,
}

impl CoreRun {
    async fn run(self) -> io::Result<CoreStats> {
        let s = &self.scenario;
        let state = Rc::new(CoreState {
            queue: RefCell::new(VecDeque::new()),
            work: Notify::new(),
            idle: Cell::new(0),
            connections: Cell::new(0),
            in_flight: Cell::new(0),
            dispatching: Cell::new(true),
            stats: RefCell::new(CoreStats::new(s.endpoints.len())),
            interval: RefCell::new(IntervalStats::new(0)),
            warmup_end: self.started + s.warmup,
            timeout: s.timeout,
            open_model: matches!(s.load, Load::Open { .. }),
            h2: H2Pool::default(),
        });
        let ticker =
            tokio::task::spawn_local(report_intervals(Rc::clone(&state), self.started, self.intervals.clone()));
        match &s.load {
            Load::Open { start_rps, stages } => self.open(&state, RatePlan::new(*start_rps, stages)).await?,
            Load::Closed { connections, think_time, duration } => {
                self.closed(&state, *connections, *think_time, *duration).await
            }
        }
        ticker.abort();
        // The last partial second.
        let last = state.interval.replace(IntervalStats::new(0));
        let _ = self.intervals.send(IntervalStats { second: (Instant::now() - self.started).as_secs(), ..last });
        Ok(state.stats.replace(CoreStats::new(0)))
    }

    async fn open(&self, state: &Rc<CoreState>, plan: RatePlan) -> io::Result<()> {
        let s = &self.scenario;
        let picker = EndpointPicker::new(&s.endpoints.iter().map(|e| e.weight).collect::<Vec<_>>());
        let cap = s.max_connections.div_ceil(self.cores).max(1);
        let pacer = Pacer::new()?;
        let mut seq = self.core as u64;
        let step = self.cores as u64;
        let dispatch = async {
            while let Some(offset) = plan.time_of(seq) {
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = self.started + offset;
                let now = Instant::now();
                if due > now {
                    // Wake at least every 50 ms to notice a stop request during slow stages.
                    pacer.sleep_until(due.min(now + Duration::from_millis(50))).await?;
                    continue;
                }
                let mut fresh = 0usize;
                {
                    let mut queue = state.queue.borrow_mut();
                    while let Some(offset) = plan.time_of(seq) {
                        let intended = self.started + offset;
                        if intended > now {
                            break;
                        }
                        queue.push_back(Ticket { intended, endpoint: picker.pick(s.seed, seq) });
                        seq += step;
                        fresh += 1;
                    }
                }
                let queued = state.queue.borrow().len();
                let idle = state.idle.get();
                if queued > idle {
                    let wanted = queued - idle;
                    let room = cap - state.connections.get();
                    for _ in 0..wanted.min(room) {
                        let index = state.connections.get();
                        state.connections.set(index + 1);
                        tokio::task::spawn_local(open_worker(
                            Rc::clone(state),
                            Arc::clone(&self.scenario),
                            self.addr,
                            index,
                        ));
                    }
                    if wanted > room {
                        state.stats.borrow_mut().cap_waits += (wanted - room).min(fresh) as u64;
                    }
                }
                for _ in 0..queued.min(idle) {
                    state.work.notify_one();
                }
            }
            io::Result::Ok(())
        };
        let result = dispatch.await;
        state.dispatching.set(false);
        state.work.notify_waiters();
        // Let queued and in-flight requests finish, within the request timeout.
        let drain_until = Instant::now() + s.timeout + Duration::from_millis(100);
        while (state.in_flight.get() > 0 || !state.queue.borrow().is_empty())
            && Instant::now() < drain_until
            && !self.stop.load(Ordering::Relaxed)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left = state.queue.borrow_mut().drain(..).count() as u64;
        state.stats.borrow_mut().dropped += left;
        state.work.notify_waiters();
        result
    }

    async fn closed(&self, state: &Rc<CoreState>, connections: usize, think: Duration, duration: Duration) {
        let s = &self.scenario;
        // Spread connections and the request budget over the cores.
        let mine = connections / self.cores + usize::from(self.core < connections % self.cores);
        let budget =
            s.max_requests / self.cores as u64 + u64::from((self.core as u64) < s.max_requests % self.cores as u64);
        let sent = Rc::new(Cell::new(0u64));
        let end = self.started + duration;
        let picker = Rc::new(EndpointPicker::new(&s.endpoints.iter().map(|e| e.weight).collect::<Vec<_>>()));
        tokio::time::sleep_until(self.started.into()).await;
        let mut workers = Vec::with_capacity(mine);
        for conn in 0..mine {
            let (state, scenario, picker, sent, stop) =
                (Rc::clone(state), Arc::clone(s), Rc::clone(&picker), Rc::clone(&sent), Arc::clone(&self.stop));
            let (addr, core, cores) = (self.addr, self.core, self.cores);
            workers.push(tokio::task::spawn_local(async move {
                let mut conn_state = Connection::new(scenario.client, conn);
                // Request numbers for the endpoint choice: unique per core and connection.
                let mut seq = (conn * cores + core) as u64;
                let stride = (mine.max(1) * cores) as u64;
                while Instant::now() < end && sent.get() < budget && !stop.load(Ordering::Relaxed) {
                    sent.set(sent.get() + 1);
                    let endpoint = picker.pick(scenario.seed, seq);
                    seq += stride;
                    let start = Instant::now();
                    execute(&state, &scenario.endpoints[endpoint], endpoint, &mut conn_state, addr, start).await;
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
    }
}

/// An open-model connection task: takes due tickets from the core's queue until the plan ends.
async fn open_worker(state: Rc<CoreState>, scenario: Arc<Scenario>, addr: SocketAddr, index: usize) {
    let mut conn = Connection::new(scenario.client, index);
    loop {
        let ticket = loop {
            if let Some(t) = state.queue.borrow_mut().pop_front() {
                break Some(t);
            }
            if !state.dispatching.get() {
                break None;
            }
            state.idle.set(state.idle.get() + 1);
            state.work.notified().await;
            state.idle.set(state.idle.get() - 1);
        };
        let Some(ticket) = ticket else { break };
        execute(&state, &scenario.endpoints[ticket.endpoint], ticket.endpoint, &mut conn, addr, ticket.intended).await;
    }
}

type Http1Connection = hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Full<Bytes>>;
/// A hyper connection: the handle that sends, and the future that drives its I/O.
type HyperPair = (SendRequest<Full<Bytes>>, Pin<Box<Http1Connection>>);

/// A worker's connection, through the client the scenario chose.
enum Connection {
    Wire(Option<WireConnection>),
    Hyper(HyperConnection),
    /// A stream on one of the core's shared HTTP/2 connections.
    H2 {
        slot: usize,
    },
}

/// Streams one HTTP/2 connection carries before the next worker gets a connection of its own.
const H2_STREAMS_PER_CONNECTION: usize = 100;

impl Connection {
    /// `worker` numbers the core's workers; HTTP/2 workers share connections by it.
    fn new(client: Client, worker: usize) -> Connection {
        match client {
            Client::Http1 => Connection::Wire(None),
            Client::Hyper => Connection::Hyper(HyperConnection::default()),
            Client::H2 => Connection::H2 { slot: worker / H2_STREAMS_PER_CONNECTION },
        }
    }

    async fn exchange(
        &mut self,
        endpoint: &Endpoint,
        addr: SocketAddr,
        state: &CoreState,
    ) -> Result<(u16, u64), FailureKind> {
        match self {
            Connection::Wire(slot) => {
                let conn = match slot {
                    Some(conn) => conn,
                    None => {
                        let conn = WireConnection::connect(addr).await?;
                        state.stats.borrow_mut().connections_opened += 1;
                        slot.insert(conn)
                    }
                };
                let (status, bytes, reusable) =
                    conn.exchange(&endpoint.wire, endpoint.method == http::Method::HEAD).await?;
                if !reusable {
                    *slot = None;
                }
                Ok((status, bytes))
            }
            Connection::Hyper(conn) => {
                conn.ready(addr, state).await?;
                conn.exchange(endpoint).await
            }
            Connection::H2 { slot } => {
                let mut sender = state.h2.sender(*slot, addr, state).await?;
                sender.ready().await.map_err(|_| FailureKind::Io)?;
                let response = sender.send_request(h2_request(endpoint)).await.map_err(|_| FailureKind::Io)?;
                drain(response).await
            }
        }
    }

    /// Forgets a connection that failed: it cannot be trusted with the next request.
    fn discard(&mut self) {
        match self {
            Connection::Wire(slot) => *slot = None,
            Connection::Hyper(conn) => conn.open = None,
            // One failed stream says nothing about the shared connection; a closed one is
            // replaced when next used.
            Connection::H2 { .. } => {}
        }
    }
}

/// One keep-alive connection, driven by the task that sends on it: the request and the
/// connection's I/O are polled together, so a request costs no hop to another task.
#[derive(Default)]
struct HyperConnection {
    open: Option<HyperPair>,
}

impl HyperConnection {
    /// The live connection, or a new one if there is none or the server closed it while idle.
    async fn ready(&mut self, addr: SocketAddr, state: &CoreState) -> Result<(), FailureKind> {
        if let Some((_, conn)) = &mut self.open {
            // Poll once: a connection the server closed finishes here instead of failing a request.
            let closed = tokio::select! {
                biased;
                _ = conn.as_mut() => true,
                _ = std::future::ready(()) => false,
            };
            if !closed {
                return Ok(());
            }
            self.open = None;
        }
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| FailureKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| FailureKind::Connect)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| FailureKind::Connect)?;
        state.stats.borrow_mut().connections_opened += 1;
        self.open = Some((sender, Box::pin(conn)));
        Ok(())
    }

    /// Sends one request and drains the response, driving the connection meanwhile.
    async fn exchange(&mut self, endpoint: &Endpoint) -> Result<(u16, u64), FailureKind> {
        let Some((sender, conn)) = &mut self.open else { return Err(FailureKind::Io) };
        let (result, ended) = {
            let exchange = async {
                sender.ready().await.map_err(|_| FailureKind::Io)?;
                let response = sender.send_request(request(endpoint)).await.map_err(|_| FailureKind::Io)?;
                drain(response).await
            };
            tokio::pin!(exchange);
            tokio::select! {
                biased;
                result = &mut exchange => (result, false),
                // The connection ended (e.g. `Connection: close` after this response): whatever it
                // delivered before ending is still ours to read.
                _ = conn.as_mut() => (exchange.await, true),
            }
        };
        if ended {
            self.open = None;
        }
        result
    }
}

/// Reads a response body to its end, counting bytes, keeping none.
async fn drain(response: http::Response<hyper::body::Incoming>) -> Result<(u16, u64), FailureKind> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| FailureKind::Io)?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
        }
    }
    Ok((status, bytes))
}

/// Runs hyper's HTTP/2 connection tasks on the core's own `LocalSet`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// The core's HTTP/2 connections (h2c, prior knowledge), each shared by up to
/// `H2_STREAMS_PER_CONNECTION` workers.
#[derive(Default)]
struct H2Pool {
    /// One slot per connection; its lock is held while the connection is made, so workers that
    /// find the slot empty at once wait for that one connection instead of each opening another.
    slots: RefCell<Vec<Rc<tokio::sync::Mutex<Option<H2Sender>>>>>,
}

impl H2Pool {
    async fn sender(&self, slot: usize, addr: SocketAddr, state: &CoreState) -> Result<H2Sender, FailureKind> {
        let cell = {
            let mut slots = self.slots.borrow_mut();
            if slots.len() <= slot {
                slots.resize_with(slot + 1, Default::default);
            }
            Rc::clone(&slots[slot])
        };
        let mut current = cell.lock().await;
        if let Some(sender) = current.as_ref()
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|_| FailureKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| FailureKind::Connect)?;
        let (sender, conn) = hyper::client::conn::http2::handshake(LocalExec, TokioIo::new(stream))
            .await
            .map_err(|_| FailureKind::Connect)?;
        tokio::task::spawn_local(async move {
            // Errors surface on the streams that hit them.
            let _ = conn.await;
        });
        state.stats.borrow_mut().connections_opened += 1;
        *current = Some(sender.clone());
        Ok(sender)
    }
}

/// HTTP/2 wants the scheme and authority in the URI (they become pseudo-headers), not a Host.
fn h2_request(endpoint: &Endpoint) -> Request<Full<Bytes>> {
    let mut req = request(endpoint);
    *req.uri_mut() = endpoint.absolute_uri.clone();
    req.headers_mut().remove(http::header::HOST);
    req
}

fn request(endpoint: &Endpoint) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(endpoint.body.clone()));
    *req.method_mut() = endpoint.method.clone();
    *req.uri_mut() = endpoint.uri.clone();
    *req.headers_mut() = endpoint.headers.clone();
    req
}

/// Sends one request and records it. `intended` is when it should have been sent.
async fn execute(
    state: &CoreState,
    endpoint: &Endpoint,
    index: usize,
    conn: &mut Connection,
    addr: SocketAddr,
    intended: Instant,
) {
    state.in_flight.set(state.in_flight.get() + 1);
    {
        let mut stats = state.stats.borrow_mut();
        stats.max_in_flight = stats.max_in_flight.max(state.in_flight.get());
    }
    let deadline = tokio::time::Instant::now() + state.timeout;
    // Schedule lag ends when this request starts being worked on; opening a connection (when
    // the server closed the last one) is the target's time, so it counts as service time.
    let sent = Instant::now();
    let result = tokio::time::timeout_at(deadline, conn.exchange(endpoint, addr, state))
        .await
        .unwrap_or(Err(FailureKind::Timeout));
    let done = Instant::now();
    state.in_flight.set(state.in_flight.get() - 1);
    let outcome = match &result {
        Ok((status, _)) if endpoint.expect_status.contains(status) => Outcome::Expected,
        Ok(_) => Outcome::Unexpected,
        Err(_) => {
            conn.discard();
            Outcome::Failed
        }
    };
    let latency = nanos(done - intended);
    {
        let mut interval = state.interval.borrow_mut();
        interval.completed += 1;
        interval.failed += u64::from(outcome != Outcome::Expected);
        interval.latency.saturating_record(latency.max(1));
    }
    if intended < state.warmup_end {
        state.stats.borrow_mut().warmup_requests += 1;
        return;
    }
    let mut stats = state.stats.borrow_mut();
    stats.sent += 1;
    if state.open_model {
        stats.schedule_lag.saturating_record(nanos(sent.saturating_duration_since(intended)).max(1));
    }
    let e = &mut stats.endpoints[index];
    e.record(outcome, latency, nanos(done - sent));
    match result {
        Ok((status, bytes)) => e.count_status(status, bytes),
        Err(kind) => e.failures[kind as usize] += 1,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Hands the aggregator one interval per second, aligned to the run's start.
async fn report_intervals(state: Rc<CoreState>, started: Instant, out: mpsc::UnboundedSender<IntervalStats>) {
    let mut second = 0u64;
    loop {
        second += 1;
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let mut done = state.interval.replace(IntervalStats::new(second));
        done.second = second - 1;
        done.in_flight = state.in_flight.get();
        if out.send(done).is_err() {
            return;
        }
    }
}

/// Sleeps on a timerfd: microsecond wake-ups without spinning.
struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    fn new() -> io::Result<Pacer> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        // `AsyncFd::new` is deprecated because a borrowed fd could be closed while registered;
        // here the AsyncFd owns the OwnedFd, so it lives exactly as long as the registration.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Pacer { fd })
    }

    async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let Some(wait) = deadline.checked_duration_since(Instant::now()).filter(|w| *w >= Duration::from_micros(2))
        else {
            // Closer than a syscall round trip: give other tasks a turn and go.
            tokio::task::yield_now().await;
            return Ok(());
        };
        let value = Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
        timerfd_settime(
            self.fd.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec { it_interval: Timespec::default(), it_value: value },
        )?;
        let mut buf = [0u8; 8];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut buf).map_err(io::Error::from)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}
