import NodeMap
import Testing
import Wire

@testable import Detector

let ms = DetectorSettings.millisecond
let sec = DetectorSettings.second

/// The instant `s` after the start of a test run (time 0).
func at(_ s: TimeSpan) -> Instant { .zero + s }

/// 10.0.0.i: derived ID i, heartbeat port 7000+i.
func addr(_ i: Int) -> IPAddress { IPAddress(v4: 0x0A00_0000 | UInt32(i)) }
func port(_ i: Int) -> UInt16 { UInt16(7000 + i) }
func claim(_ i: Int, incarnation: UInt64 = 0) -> NodeClaim {
    NodeClaim(address: addr(i), incarnation: incarnation, heartbeatPort: port(i))
}

/// A map that knows nodes `ids`, all alive, heard at `now`.
func makeMap(_ ids: [Int], now: Instant = .zero) -> NodeMap {
    var m = NodeMap()
    for i in ids { m.observe(claim(i), now: now) }
    return m
}

/// A tiny deterministic network of detector cores in virtual time: every `.send` arrives after
/// `latency` unless `drop` says otherwise; `.multicast` reaches every other running node.
/// It plays the shell: touches the origin in the receiver's map, and on `.refute` bumps the node's
/// incarnation and "announces" it to every map at once (when `announceOnRefute`).
struct TestNet {
    struct Packet {
        var at: Instant
        var seq: Int
        var from: IPAddress
        var fromIncarnation: UInt64
        var to: IPAddress
        var body: Body
    }

    struct Event {
        var at: Instant
        var node: IPAddress
        var change: NodeMapChange
    }

    var now: Instant = .zero
    var settings: DetectorSettings
    var cores: [IPAddress: DetectorCore] = [:]
    var maps: [IPAddress: NodeMap] = [:]
    var order: [IPAddress] = []
    var queue: [Packet] = []
    var seq = 0
    var latency: TimeSpan = 1 * ms
    var crashed: Set<IPAddress> = []
    var paused: Set<IPAddress> = []
    var buffered: [IPAddress: [Packet]] = [:]
    var drop: @Sendable (_ from: IPAddress, _ to: IPAddress, _ body: Body) -> Bool = { _, _, _ in false }
    var announceOnRefute = true
    /// Cut one dissemination path of death notices: the multicast, or the binomial-graph unicasts.
    var dropMulticastDeadNotices = false
    var dropUnicastDeadNotices = false
    /// Every map change a detector emitted, with its time.
    var events: [Event] = []
    var logs: [IPAddress: [DetectorEvent]] = [:]
    var refutes: [IPAddress: Int] = [:]
    /// Ports seen on sends that did not match the destination's heartbeat port.
    var wrongPorts = 0

    init(nodes: [Int], settings: DetectorSettings) {
        self.settings = settings
        for i in nodes { start(i, knowing: nodes) }
    }

    mutating func start(_ i: Int, knowing ids: [Int], incarnation: UInt64 = 0) {
        let a = addr(i)
        var m = makeMap(ids, now: now)
        if incarnation > 0 { m.observe(claim(i, incarnation: incarnation), now: now) }
        maps[a] = m
        cores[a] = DetectorCore(settings: settings, selfAddress: a, now: now)
        if !order.contains(a) { order.append(a) }
        crashed.remove(a)
        let out = cores[a]!.mapChanged(m, now: now)
        handle(out, from: a)
    }

    func core(_ i: Int) -> DetectorCore { cores[addr(i)]! }
    func map(_ i: Int) -> NodeMap { maps[addr(i)]! }
    func state(of j: Int, at i: Int) -> NodeState? { maps[addr(i)]?[addr(j)]?.state }
    var running: [IPAddress] { order.filter { !crashed.contains($0) } }

    /// First time node `i`'s detector moved `j` to `state` (nil if never).
    func firstTime(_ j: Int, became state: NodeState, at i: Int) -> Instant? {
        events.first {
            guard $0.node == addr(i), case .stateChanged(let a, _, _, let to, _) = $0.change else { return false }
            return a == addr(j) && to == state
        }?.at
    }

    /// Every (node, target) that some detector moved to `state`.
    func marked(_ state: NodeState) -> Set<IPAddress> {
        var s: Set<IPAddress> = []
        for e in events {
            if case .stateChanged(let a, _, _, let to, _) = e.change, to == state { s.insert(a) }
        }
        return s
    }

    mutating func crash(_ i: Int) { crashed.insert(addr(i)) }

    mutating func handle(_ out: [DetectorOutput], from a: IPAddress) {
        let inc = maps[a]?[a]?.incarnation ?? 0
        for o in out {
            switch o {
            case .send(.dead, _, _) where dropUnicastDeadNotices, .send(.deaths, _, _) where dropUnicastDeadNotices:
                continue
            case .multicast(.dead) where dropMulticastDeadNotices:
                continue
            case .send(let body, let to, let p):
                if maps[a]?[to]?.heartbeatPort != p { wrongPorts += 1 }
                enqueue(body, from: a, incarnation: inc, to: to)
            case .multicast(let body):
                for b in order where b != a { enqueue(body, from: a, incarnation: inc, to: b) }
            case .changes(let cs):
                for c in cs { events.append(Event(at: now, node: a, change: c)) }
            case .refute(_, _, let past):
                refutes[a, default: 0] += 1
                guard announceOnRefute, let me = maps[a]?[a] else { continue }
                let c = NodeClaim(address: a, incarnation: max(me.incarnation, past) + 1, heartbeatPort: me.heartbeatPort)
                for b in order where !crashed.contains(b) { announce(c, to: b) }
            case .event(let e):
                logs[a, default: []].append(e)
            }
        }
    }

    /// The shell's handling of an announce: `observe` the claim (the changes are recorded too).
    mutating func announce(_ c: NodeClaim, to b: IPAddress) {
        for ch in maps[b]!.observe(c, now: now) { events.append(Event(at: now, node: b, change: ch)) }
    }

    mutating func enqueue(_ body: Body, from: IPAddress, incarnation: UInt64, to: IPAddress) {
        guard !drop(from, to, body) else { return }
        seq += 1
        queue.append(Packet(at: now + latency, seq: seq, from: from, fromIncarnation: incarnation, to: to, body: body))
    }

    mutating func deliver(_ p: Packet) {
        let b = p.to
        guard !crashed.contains(b), cores[b] != nil else { return }
        if paused.contains(b) {
            buffered[b, default: []].append(p)
            return
        }
        maps[b]!.touch(p.from, now: now)
        let out = cores[b]!.receive(
            p.body, from: p.from, originIncarnation: p.fromIncarnation, now: now, map: &maps[b]!)
        handle(out, from: b)
    }

    mutating func tick(_ a: IPAddress) {
        let out = cores[a]!.tick(now: now, map: &maps[a]!)
        handle(out, from: a)
    }

    /// Runs until `end`: packets due at a time are delivered before the ticks due then.
    mutating func run(until end: Instant) {
        // A core that asks to be ticked again without time moving (a busy loop) fails the test
        // instead of hanging it: far more steps than any honest run needs.
        var steps = 0
        let limit = 200_000 + Int((end - now).nanos / 1_000_000) * 400
        while true {
            steps += 1
            if steps > limit {
                Issue.record("test network exceeded \(limit) steps before \(end.nanos / 1_000_000) ms: busy loop at \(now.nanos / 1_000_000) ms")
                break
            }
            var t = Instant.distantFuture
            for p in queue where p.at < t { t = p.at }
            for a in running where !paused.contains(a) { t = min(t, cores[a]!.nextDeadline) }
            guard t <= end else { break }
            now = max(now, t)
            if let i = queue.indices.filter({ queue[$0].at <= now }).min(by: { queue[$0].seq < queue[$1].seq }) {
                let p = queue.remove(at: i)
                deliver(p)
                continue
            }
            for a in running where !paused.contains(a) && cores[a]!.nextDeadline <= now {
                tick(a)
            }
        }
        now = end
    }

    /// A paused process: no ticks, and whatever arrives waits in its socket buffer.
    mutating func pause(_ i: Int) { paused.insert(addr(i)) }

    /// Resumes like a real process would: the overdue timer fires first, then the buffer is read.
    mutating func resume(_ i: Int) {
        let a = addr(i)
        paused.remove(a)
        tick(a)
        let pending = buffered.removeValue(forKey: a) ?? []
        for p in pending { deliver(p) }
    }

    /// Every state change (the detectors' and the announces') went from the state the previous one
    /// left, along a transition `setState` allows, or back to alive with a higher incarnation.
    func changesAreOrdered() -> Bool {
        var last: [IPAddress: [IPAddress: (state: NodeState, incarnation: UInt64)]] = [:]
        for e in events {
            guard case .stateChanged(let a, _, let from, let to, let inc) = e.change else { continue }
            let prev = last[e.node]?[a]
            if let prev, prev.state != from { return false }
            let revived = (from == .dead || from == .left) && to == .alive && inc > (prev?.incarnation ?? 0)
            guard NodeMap.allowed(from: from, to: to) || revived else { return false }
            last[e.node, default: [:]][a] = (to, inc)
        }
        return true
    }
}

extension TestNet: CustomTestStringConvertible {
    var testDescription: String {
        "TestNet(t = \((now - .zero) / ms) ms, \(order.count) nodes, crashed \(crashed.sorted()), \(events.count) changes)"
    }
}
