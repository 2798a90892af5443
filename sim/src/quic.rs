//! Drives quinn-proto endpoints and connections for one simulated node: datagrams in,
//! datagrams out, frames read from streams, frames written to the control stream or to new
//! unidirectional streams. This is the simulator's counterpart of the quinn shells in origin
//! and edge; it decides nothing about replication.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use meridian_protocol::frame::{DEFAULT_MAX_FRAME_BYTES, encode};
use meridian_protocol::{Frame, FrameDecoder};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    ServerConfig, Side, StreamEvent, StreamId,
};

/// Something that happened on a node's connections.
#[derive(Debug)]
pub enum HostEvent {
    /// A handshake completed; `side` says who dialed.
    Connected(ConnectionHandle, Side),
    /// A connection ended (timed out, closed, or reset).
    Lost(ConnectionHandle),
    /// A whole frame arrived.
    Frame(ConnectionHandle, Frame),
    /// Bytes on a stream were not a valid frame.
    Malformed(ConnectionHandle),
}

struct PendingWrite {
    data: Vec<u8>,
    written: usize,
    finish: bool,
}

struct Conn {
    conn: quinn_proto::Connection,
    control: Option<StreamId>,
    decoders: BTreeMap<StreamId, FrameDecoder>,
    writes: BTreeMap<StreamId, PendingWrite>,
    lost: bool,
}

impl Conn {
    fn new(conn: quinn_proto::Connection) -> Self {
        Self {
            conn,
            control: None,
            decoders: BTreeMap::new(),
            writes: BTreeMap::new(),
            lost: false,
        }
    }
}

/// One node's QUIC endpoint and connections.
pub struct QuicHost {
    addr: SocketAddr,
    endpoint: Endpoint,
    client: Option<ClientConfig>,
    conns: BTreeMap<ConnectionHandle, Conn>,
    /// Connections touched since the last drive (a datagram, a timer, a write, a close): only
    /// these can have anything new to poll or transmit.
    dirty: BTreeSet<ConnectionHandle>,
    events: VecDeque<HostEvent>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    buf: Vec<u8>,
}

impl QuicHost {
    /// A host at `addr`; a server when `server` is set, able to dial when `client` is set.
    pub fn new(
        addr: SocketAddr,
        endpoint: EndpointConfig,
        server: Option<ServerConfig>,
        client: Option<ClientConfig>,
    ) -> Self {
        Self {
            addr,
            endpoint: Endpoint::new(Arc::new(endpoint), server.map(Arc::new), false, None),
            client,
            conns: BTreeMap::new(),
            dirty: BTreeSet::new(),
            events: VecDeque::new(),
            outbox: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// This host's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dials `remote`; `None` if the endpoint refused (never for valid addresses).
    pub fn connect(&mut self, now: Instant, remote: SocketAddr) -> Option<ConnectionHandle> {
        let config = self.client.clone()?;
        let (ch, conn) = self
            .endpoint
            .connect(now, config, remote, crate::tls::SERVER_NAME)
            .ok()?;
        self.conns.insert(ch, Conn::new(conn));
        self.dirty.insert(ch);
        Some(ch)
    }

    /// The address at the other end of a connection.
    pub fn remote(&self, ch: ConnectionHandle) -> Option<SocketAddr> {
        self.conns.get(&ch).map(|c| c.conn.remote_address())
    }

    /// Closes a connection.
    pub fn close(&mut self, now: Instant, ch: ConnectionHandle) {
        if let Some(c) = self.conns.get_mut(&ch) {
            c.conn
                .close(now, 0u32.into(), bytes::Bytes::from_static(b"close"));
            self.dirty.insert(ch);
        }
    }

    /// Sends a frame on the connection's control stream (the dialer opens it).
    pub fn send_control(&mut self, ch: ConnectionHandle, frame: &Frame) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let id = match c.control {
            Some(id) => id,
            None => {
                if c.conn.side() != Side::Client {
                    return;
                }
                let Some(id) = c.conn.streams().open(Dir::Bi) else {
                    return;
                };
                c.control = Some(id);
                id
            }
        };
        let Ok(bytes) = encode(frame) else { return };
        self.dirty.insert(ch);
        let w = c.writes.entry(id).or_insert(PendingWrite {
            data: Vec::new(),
            written: 0,
            finish: false,
        });
        w.data.extend_from_slice(&bytes);
    }

    /// Sends frames on a new unidirectional stream and finishes it. Returns false when no
    /// stream could be opened (the peer's stream limit); the caller's protocol recovers.
    pub fn send_stream(&mut self, ch: ConnectionHandle, frames: &[Frame], priority: i32) -> bool {
        let Some(c) = self.conns.get_mut(&ch) else {
            return false;
        };
        let Some(id) = c.conn.streams().open(Dir::Uni) else {
            return false;
        };
        let _ = c.conn.send_stream(id).set_priority(priority);
        self.dirty.insert(ch);
        let mut data = Vec::new();
        for f in frames {
            if let Ok(b) = encode(f) {
                data.extend_from_slice(&b);
            }
        }
        c.writes.insert(
            id,
            PendingWrite {
                data,
                written: 0,
                finish: true,
            },
        );
        true
    }

    /// A datagram arrived from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.buf.clear();
        let event = self.endpoint.handle(
            now,
            from,
            Some(self.addr.ip()),
            None,
            BytesMut::from(data),
            &mut self.buf,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(ev);
                    self.dirty.insert(ch);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.buf.clear();
                match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                    Ok((ch, conn)) => {
                        self.conns.insert(ch, Conn::new(conn));
                        self.dirty.insert(ch);
                    }
                    Err(e) => {
                        if let Some(t) = e.response {
                            self.outbox
                                .push((t.destination, self.buf[..t.size].to_vec()));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.outbox
                    .push((t.destination, self.buf[..t.size].to_vec()));
            }
            None => {}
        }
    }

    /// Fires connection timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (ch, c) in self.conns.iter_mut() {
            if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                c.conn.handle_timeout(now);
                self.dirty.insert(*ch);
            }
        }
    }

    /// The earliest connection timer.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conns
            .values_mut()
            .filter_map(|c| c.conn.poll_timeout())
            .min()
    }

    /// The next event for the node's state machines.
    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// Datagrams to put on the network: `(destination, bytes)`.
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Moves everything along: endpoint events, application events, stream reads and writes,
    /// and outgoing datagrams.
    pub fn drive(&mut self, now: Instant) {
        let handles = std::mem::take(&mut self.dirty);
        for ch in handles {
            let Some(c) = self.conns.get_mut(&ch) else {
                continue;
            };
            while let Some(ev) = c.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.conn.handle_event(back);
                }
            }
            while let Some(ev) = c.conn.poll() {
                match ev {
                    Event::Connected => self
                        .events
                        .push_back(HostEvent::Connected(ch, c.conn.side())),
                    Event::ConnectionLost { .. } if !c.lost => {
                        c.lost = true;
                        self.events.push_back(HostEvent::Lost(ch));
                    }
                    Event::Stream(StreamEvent::Opened { dir }) => {
                        while let Some(id) = c.conn.streams().accept(dir) {
                            if dir == Dir::Bi && c.control.is_none() {
                                c.control = Some(id);
                            }
                            read_stream(ch, c, id, &mut self.events);
                        }
                    }
                    Event::Stream(StreamEvent::Readable { id }) => {
                        read_stream(ch, c, id, &mut self.events)
                    }
                    _ => {}
                }
            }
            flush_writes(c);
            loop {
                self.buf.clear();
                match c.conn.poll_transmit(now, 1, &mut self.buf) {
                    Some(t) => self
                        .outbox
                        .push((t.destination, self.buf[..t.size].to_vec())),
                    None => break,
                }
            }
            if c.conn.is_drained() {
                if !c.lost {
                    self.events.push_back(HostEvent::Lost(ch));
                }
                self.conns.remove(&ch);
            }
        }
    }
}

fn flush_writes(c: &mut Conn) {
    let ids: Vec<StreamId> = c.writes.keys().copied().collect();
    for id in ids {
        let Some(w) = c.writes.get_mut(&id) else {
            continue;
        };
        let mut stream = c.conn.send_stream(id);
        let mut failed = false;
        while w.written < w.data.len() {
            match stream.write(&w.data[w.written..]) {
                Ok(0) => break,
                Ok(n) => w.written += n,
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            c.writes.remove(&id);
            continue;
        }
        if w.written == w.data.len() {
            if w.finish {
                let _ = stream.finish();
                c.writes.remove(&id);
            } else {
                w.data.clear();
                w.written = 0;
            }
        }
    }
}

fn read_stream(ch: ConnectionHandle, c: &mut Conn, id: StreamId, events: &mut VecDeque<HostEvent>) {
    let mut finished = false;
    let mut failed = false;
    {
        let decoder = c
            .decoders
            .entry(id)
            .or_insert_with(|| FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES));
        let mut recv = c.conn.recv_stream(id);
        let Ok(mut chunks) = recv.read(true) else {
            return;
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => decoder.push(&chunk.bytes),
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let _ = chunks.finalize();
    }
    let Some(decoder) = c.decoders.get_mut(&id) else {
        return;
    };
    loop {
        match decoder.next_frame() {
            Ok(Some(frame)) => events.push_back(HostEvent::Frame(ch, frame)),
            Ok(None) => break,
            Err(_) => {
                events.push_back(HostEvent::Malformed(ch));
                c.decoders.remove(&id);
                let _ = c.conn.recv_stream(id).stop(0u32.into());
                return;
            }
        }
    }
    if finished || failed {
        if finished && decoder.finish().is_err() {
            events.push_back(HostEvent::Malformed(ch));
        }
        c.decoders.remove(&id);
    }
}
