#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Events
import Detector
import NodeMap
import Wire

/// Nearest-rank percentiles of a sample.
public struct Percentiles: Sendable, Equatable {
    public var count: Int
    public var p50: UInt64
    public var p90: UInt64
    public var p99: UInt64
    public var max: UInt64

    public init?(_ values: [UInt64]) {
        guard !values.isEmpty else { return nil }
        let s = values.sorted()
        func rank(_ p: Double) -> UInt64 {
            let r = Int((p * Double(s.count)).rounded(.up))
            return s[Swift.min(Swift.max(r, 1), s.count) - 1]
        }
        count = s.count
        p50 = rank(0.5)
        p90 = rank(0.9)
        p99 = rank(0.99)
        max = s[s.count - 1]
    }
}

/// What a run showed: the checked properties and the measured load.
public struct SimReport: Sendable {
    public struct DepartureSummary: Sendable {
        public var kind: Departure.Kind
        public var node: Int
        public var address: IPAddress
        public var at: UInt64
        public var survivors: Int
        public var known: Int
        public var neverKnew: Int
        public var latency: Percentiles?
        /// δ + confirm window + (ceil(log2 N) + 2) × max latency (crashes with a detector only).
        public var bound: UInt64?
        /// Survivors that learned later than `bound`, or not at all.
        public var overBound: Int
        public var complete: Bool
    }

    public struct ArrivalSummary: Sendable {
        public var node: Int
        public var at: UInt64
        public var observers: Int
        public var known: Int
        public var latency: Percentiles?
        public var complete: Bool
    }

    public var nodes: Int
    public var seed: UInt64
    public var virtualTime: UInt64
    public var wallSeconds: Double
    public var events: Int
    /// Full O(N²) map comparisons run to confirm convergence.
    public var verifications: Int
    public var running: Int
    public var startupConvergence: UInt64?
    public var convergedAtEnd: Bool
    /// Each change of the live set or the network (start, crash, stop, restart, partition, heal) and
    /// when every live map next equalled the live set.
    public var epochs: [ConvergenceEpoch]
    /// Up to five running nodes whose map was incomplete at the end, with what they lacked.
    public var incomplete: [(node: Int, missing: [Int], extra: [IPAddress])]
    public var departures: [DepartureSummary]
    public var arrivals: [ArrivalSummary]
    /// Per kind of event (join, leave, death): percentiles over the events of the time until the
    /// last map learned of it (complete events only).
    public var lastMapLearned: [(kind: String, events: Int, incomplete: Int, latency: Percentiles?)]
    /// Datagrams sent per node in the first 10 s of virtual time, heartbeats excluded, and by type
    /// (all nodes); nil when the run was shorter.
    public var stormFirst10s: (perNode: Double, byType: [Int])?
    public var falseDeaths: Int
    public var falseDeathsAcrossPartition: Int
    public var falseDeathMarks: Int
    /// False deaths (not across a partition) by how the first marker came to it.
    public var falseDeathCauses: [FalseDeath.Cause: Int]
    /// The first few false deaths not across a partition (what to `--diagnose`).
    public var firstFalseDeaths: [FalseDeath]
    public var detector: DetectorStats
    public var pauses: Int
    /// Measuring window of the traffic figures.
    public var window: (from: UInt64, to: UInt64)
    public var traffic: TrafficCounters
    public var totalTraffic: TrafficCounters
    /// The settled cluster's load: from convergence to the first scenario action (nil if none came
    /// after convergence).
    public var steadyBeforeEvents: (from: UInt64, to: UInt64, traffic: TrafficCounters)?
    /// Sent per node and second over `steadyBeforeEvents`.
    public var steadySentPerNode: (messages: Double, bytes: Double)? {
        guard let w = steadyBeforeEvents, w.to > w.from else { return nil }
        let d = Double(w.to - w.from) / 1e9 * Double(Swift.max(running, 1))
        return (Double(w.traffic.sent) / d, Double(w.traffic.sentBytes) / d)
    }
    /// Traffic from time 0 to the first convergence (the start storm), if the window starts there.
    public var startupTraffic: TrafficCounters?
    public var peakRSSBytes: Int?
    /// How much of the memory was in transparent huge pages at the end (`discd simulate` asks glibc
    /// for them where the kernel offers them).
    public var hugePageBytes: Int?
    public var traceHash: UInt64

    public var windowSeconds: Double { Double(window.to - window.from) / 1e9 }
    /// Per node and second over the window.
    public var sentPerNode: (messages: Double, bytes: Double) { perNode(traffic.sent, traffic.sentBytes) }
    public var receivedPerNode: (messages: Double, bytes: Double) {
        perNode(traffic.delivered, traffic.deliveredBytes)
    }
    /// Announces sent per second by the whole cluster over the window.
    public var announceRate: Double {
        windowSeconds > 0 ? Double(traffic.sentByType[Int(MessageType.announce.rawValue)]) / windowSeconds : 0
    }

    private func perNode(_ m: Int, _ b: Int) -> (messages: Double, bytes: Double) {
        let d = windowSeconds * Double(Swift.max(running, 1))
        return d > 0 ? (Double(m) / d, Double(b) / d) : (0, 0)
    }

    public init(_ sim: Simulator) {
        nodes = sim.nodeCount
        seed = sim.config.seed
        virtualTime = sim.now
        wallSeconds = sim.wallSeconds
        events = sim.events
        verifications = sim.verifications
        running = sim.liveCount
        startupConvergence = sim.startupConvergence
        convergedAtEnd = sim.membersEqualLiveSet()
        epochs = sim.epochs
        incomplete = convergedAtEnd ? [] : sim.incompleteMaps()
        departures = sim.departures.map { d in
            let lat = d.latencies
            let bound = d.kind == .crash ? sim.config.detectionBound(members: d.survivors + 1) : nil
            let late = bound.map { b in lat.filter { $0 > b }.count } ?? 0
            return DepartureSummary(
                kind: d.kind, node: d.node, address: d.address, at: d.time, survivors: d.survivors,
                known: d.survivors - d.pending, neverKnew: d.neverKnew, latency: Percentiles(lat), bound: bound,
                overBound: late + d.pending, complete: d.pending == 0)
        }
        arrivals = sim.arrivals.map { a in
            ArrivalSummary(
                node: a.node, at: a.time, observers: a.observers, known: a.observers - a.pending,
                latency: Percentiles(a.latencies), complete: a.pending == 0)
        }
        func last(_ events: [(latencies: [UInt64], complete: Bool)], _ kind: String) -> (kind: String, events: Int, incomplete: Int, latency: Percentiles?) {
            let done = events.filter(\.complete)
            return (kind, events.count, events.count - done.count, Percentiles(done.map { $0.latencies.max() ?? 0 }))
        }
        lastMapLearned = [
            last(sim.arrivals.map { ($0.latencies, $0.pending == 0) }, "join"),
            last(sim.departures.filter { $0.kind == .stop }.map { ($0.latencies, $0.pending == 0) }, "leave"),
            last(sim.departures.filter { $0.kind == .crash }.map { ($0.latencies, $0.pending == 0) }, "death"),
        ]
        stormFirst10s = sim.trafficFirst10s.map { t in
            let hb = Int(MessageType.heartbeat.rawValue)
            let beyond = t.sentByType.enumerated().filter { $0.offset != hb }.map(\.element).reduce(0, +)
            return (Double(beyond) / Double(Swift.max(sim.nodeCount, 1)), t.sentByType)
        }
        falseDeaths = sim.falseDeaths.filter { !$0.acrossPartition }.count
        falseDeathsAcrossPartition = sim.falseDeaths.count - falseDeaths
        falseDeathMarks = sim.falseDeathMarks
        var causes: [FalseDeath.Cause: Int] = [:]
        for f in sim.falseDeaths where !f.acrossPartition { causes[f.cause, default: 0] += 1 }
        falseDeathCauses = causes
        firstFalseDeaths = Array(sim.falseDeaths.lazy.filter { !$0.acrossPartition }.prefix(5))
        detector = sim.detectorTotals()
        pauses = sim.pausesApplied
        window = (sim.windowStart.time, sim.now)
        steadyBeforeEvents = sim.steadyBeforeEvents
        traffic = sim.traffic - sim.windowStart.traffic
        totalTraffic = sim.traffic
        startupTraffic = sim.startupConvergence == sim.windowStart.time ? sim.windowStart.traffic : nil
        peakRSSBytes = ProcessMemory.peakRSSBytes()
        hugePageBytes = ProcessMemory.hugePageBytes()
        traceHash = sim.traceHash
    }

    // MARK: Rendering

    public func text() -> String {
        var l: [String] = []
        let conv = startupConvergence.map { ms($0) } ?? "not reached"
        l.append("nodes \(nodes) (running \(running)), seed \(seed), virtual time \(ms(virtualTime)), \(events) events (\(verifications) full map comparisons), wall \(fmt(wallSeconds, 2)) s")
        l.append("convergence (every live map == live set): \(conv) after the first start; at the end: \(convergedAtEnd ? "yes" : "NO")")
        for m in incomplete {
            l.append(
                "  map of node \(m.node) lacks \(m.missing.count) live node(s) \(m.missing.prefix(5).map { String($0) }.joined(separator: ","))"
                    + (m.extra.isEmpty ? "" : ", holds \(m.extra.count) non-live member(s)"))
        }
        if epochs.count > 1 {
            let e = epochs.map { e in "\(ms(e.since)) -> " + (e.convergedAt.map { "\(ms($0)) (+\(ms($0 - e.since)))" } ?? "never") }
            l.append("reconvergence after each change: " + e.joined(separator: "; "))
        }
        for d in departures {
            var s = "\(d.kind) of node \(d.node) (\(d.address)) at \(ms(d.at)): known by \(d.known)/\(d.survivors) survivors"
            if d.neverKnew > 0 { s += " (\(d.neverKnew) never had it)" }
            if let p = d.latency {
                s += "; latency p50 \(ms(p.p50)) p90 \(ms(p.p90)) p99 \(ms(p.p99)) max \(ms(p.max))"
            }
            if let b = d.bound { s += "; bound \(ms(b)), over bound \(d.overBound)" }
            l.append(s)
        }
        for e in lastMapLearned where e.events > 0 {
            let p = e.latency.map { "p50 \(ms($0.p50)) p90 \(ms($0.p90)) p99 \(ms($0.p99)) max \(ms($0.max))" } ?? "-"
            l.append("last map learned of each \(e.kind) (\(e.events) events\(e.incomplete > 0 ? ", \(e.incomplete) incomplete" : "")): \(p)")
        }
        if let st = stormFirst10s {
            l.append("start storm, first 10 s: \(fmt(st.perNode, 1)) datagrams per node beyond heartbeats")
        }
        l.append(
            "false deaths (live node marked dead): \(falseDeaths) nodes, \(falseDeathMarks) marks"
                + (falseDeaths > 0 ? " (first marked by: " + causeText + ")" : "")
                + (falseDeathsAcrossPartition > 0 ? "; across the partition (expected): \(falseDeathsAcrossPartition)" : ""))
        for f in firstFalseDeaths {
            l.append(
                "  node \(f.target) (incarnation \(f.incarnation)) first marked dead by node \(f.firstMarkedBy) at "
                    + "\(ms(f.time)) (\(f.cause.rawValue)); --diagnose \(f.firstMarkedBy):\(f.target)")
        }
        l.append(
            "detector: \(detector.suspicions) suspicions, \(detector.refutedSuspicions) cleared, "
                + "\(detector.suspicionsAnswered) answered by the suspect, \(detector.refutations) refutations, "
                + "\(detector.deathsDeclared) deaths declared, \(detector.lateTicks) late ticks; pauses \(pauses)")
        let s = sentPerNode
        let r = receivedPerNode
        l.append(
            "load over \(ms(window.from))..\(ms(window.to)) per node: sent \(fmt(s.messages, 1)) msg/s \(fmt(s.bytes, 0)) B/s, "
                + "received \(fmt(r.messages, 1)) msg/s \(fmt(r.bytes, 0)) B/s; cluster announces \(fmt(announceRate, 1))/s")
        if let w = steadyBeforeEvents, let st = steadySentPerNode {
            l.append(
                "settled load over \(ms(w.from))..\(ms(w.to)) (before the first event) per node: sent \(fmt(st.messages, 1)) msg/s "
                    + "\(fmt(st.bytes, 0)) B/s")
        }
        if let st = startupTraffic, let c = startupConvergence, c > 0 {
            let d = Double(c) / 1e9 * Double(nodes)
            l.append(
                "start storm 0..\(ms(c)) per node: sent \(fmt(Double(st.sent) / d, 1)) msg/s, received "
                    + "\(fmt(Double(st.delivered) / d, 1)) msg/s \(fmt(Double(st.deliveredBytes) / d, 0)) B/s "
                    + "(joins \(st.sentByType[Int(MessageType.join.rawValue)]), announces "
                    + "\(st.sentByType[Int(MessageType.announce.rawValue)]), map-sync \(st.sentByType[Int(MessageType.mapSync.rawValue)]))")
        }
        var byType: [String] = []
        for t in MessageType.allCases where traffic.sentByType[Int(t.rawValue)] > 0 {
            byType.append("\(t) \(traffic.sentByType[Int(t.rawValue)])")
        }
        l.append("sent by type in window: " + byType.joined(separator: ", "))
        l.append(
            "network total: \(totalTraffic.sent) sent, \(totalTraffic.delivered) delivered, \(totalTraffic.lost) lost, "
                + "\(totalTraffic.duplicated) duplicated, \(totalTraffic.partitionDrops) cut by partition, "
                + "\(totalTraffic.bufferOverflows) socket-buffer overflows, \(totalTraffic.unroutable) unroutable")
        l.append(
            "memory: peak RSS \(peakRSSBytes.map { fmt(Double($0) / 1048576, 1) + " MiB" } ?? "unknown"), "
                + "in huge pages at the end \(hugePageBytes.map { fmt(Double($0) / 1048576, 1) + " MiB" } ?? "unknown")")
        l.append("trace hash \(hex(traceHash))")
        return l.joined(separator: "\n") + "\n"
    }

    private var causeText: String {
        [FalseDeath.Cause.declared, .expired, .learned].compactMap { c in
            falseDeathCauses[c].map { "\(c.rawValue) \($0)" }
        }.joined(separator: ", ")
    }

    public func json() -> String {
        typealias V = JSON.Value
        func msValue(_ v: UInt64?) -> V { v.map { .double(Double($0) / 1e6) } ?? .null }
        func pct(_ p: Percentiles?) -> V {
            guard let p else { return .null }
            return .object([
                ("p50_ms", msValue(p.p50)), ("p90_ms", msValue(p.p90)), ("p99_ms", msValue(p.p99)), ("max_ms", msValue(p.max)),
            ])
        }
        let deps: [V] = departures.map { d in
            .object([
                ("kind", .string(d.kind.rawValue)), ("node", .int(Int64(d.node))), ("address", .string("\(d.address)")),
                ("at_ms", msValue(d.at)), ("survivors", .int(Int64(d.survivors))), ("known", .int(Int64(d.known))),
                ("never_knew", .int(Int64(d.neverKnew))), ("latency", pct(d.latency)), ("bound_ms", msValue(d.bound)),
                ("over_bound", .int(Int64(d.overBound))), ("complete", .bool(d.complete)),
            ])
        }
        let s = sentPerNode
        let r = receivedPerNode
        let startup: V =
            startupTraffic.flatMap { st in
                startupConvergence.map { c in V.double(Double(st.delivered) / (Double(c) / 1e9 * Double(nodes))) }
            } ?? .null
        let fields: [(String, V)] = [
            ("nodes", .int(Int64(nodes))), ("running", .int(Int64(running))), ("seed", .uint(seed)),
            ("virtual_time_ms", msValue(virtualTime)), ("wall_seconds", .double(wallSeconds)),
            ("events", .int(Int64(events))), ("convergence_ms", msValue(startupConvergence)),
            ("converged_at_end", .bool(convergedAtEnd)),
            ("epochs", .array(epochs.map { .object([("since_ms", msValue($0.since)), ("converged_ms", msValue($0.convergedAt))]) })),
            ("departures", .array(deps)),
            ("arrivals", .array(arrivals.map { a in
                .object([
                    ("node", .int(Int64(a.node))), ("at_ms", msValue(a.at)), ("observers", .int(Int64(a.observers))),
                    ("known", .int(Int64(a.known))), ("latency", pct(a.latency)), ("complete", .bool(a.complete)),
                ])
            })),
            ("last_map_learned", .object(lastMapLearned.map { e in
                (e.kind, .object([("events", .int(Int64(e.events))), ("incomplete", .int(Int64(e.incomplete))), ("latency", pct(e.latency))]))
            })),
            ("storm_first_10s_per_node", stormFirst10s.map { .double($0.perNode) } ?? .null),
            ("storm_first_10s_by_type", stormFirst10s.map { st in
                .object(MessageType.allCases.map { ("\($0)", .int(Int64(st.byType[Int($0.rawValue)]))) })
            } ?? .null),
            ("false_deaths", .int(Int64(falseDeaths))), ("false_death_marks", .int(Int64(falseDeathMarks))),
            ("false_deaths_declared", .int(Int64(falseDeathCauses[.declared] ?? 0))),
            ("false_deaths_expired", .int(Int64(falseDeathCauses[.expired] ?? 0))),
            ("false_deaths_learned", .int(Int64(falseDeathCauses[.learned] ?? 0))),
            ("deaths_across_partition", .int(Int64(falseDeathsAcrossPartition))),
            ("suspicions", .int(Int64(detector.suspicions))), ("suspicions_cleared", .int(Int64(detector.refutedSuspicions))),
            ("suspicions_answered", .int(Int64(detector.suspicionsAnswered))),
            ("refutations", .int(Int64(detector.refutations))), ("late_ticks", .int(Int64(detector.lateTicks))),
            ("pauses", .int(Int64(pauses))),
            ("window_ms", .array([msValue(window.from), msValue(window.to)])),
            ("sent_msgs_per_node_s", .double(s.messages)), ("sent_bytes_per_node_s", .double(s.bytes)),
            ("steady_before_events", steadyBeforeEvents.flatMap { w in
                steadySentPerNode.map { st in
                    .object([
                        ("window_ms", .array([msValue(w.from), msValue(w.to)])),
                        ("sent_msgs_per_node_s", .double(st.messages)), ("sent_bytes_per_node_s", .double(st.bytes)),
                    ])
                }
            } ?? .null),
            ("received_msgs_per_node_s", .double(r.messages)), ("received_bytes_per_node_s", .double(r.bytes)),
            ("cluster_announces_per_s", .double(announceRate)),
            ("startup_received_msgs_per_node_s", startup),
            ("lost", .int(Int64(totalTraffic.lost))), ("duplicated", .int(Int64(totalTraffic.duplicated))),
            ("partition_drops", .int(Int64(totalTraffic.partitionDrops))),
            ("buffer_overflows", .int(Int64(totalTraffic.bufferOverflows))),
            ("peak_rss_bytes", peakRSSBytes.map { .int(Int64($0)) } ?? .null),
            ("huge_page_bytes", hugePageBytes.map { .int(Int64($0)) } ?? .null), ("trace_hash", .string(hex(traceHash))),
        ]
        return JSON.render(.object(fields)) + "\n"
    }
}

/// Virtual-time durations in reports and progress lines, to 0.1 ms, with the one duration formatter.
public func ms(_ ns: UInt64) -> String { DurationText.format(ns / 100_000 * 100_000) }

func fmt(_ v: Double, _ digits: Int) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let r = (v * scale).rounded() / scale
    if digits == 0 { return String(Int(r)) }
    let whole = Int(r.rounded(.towardZero))
    var frac = String(Int((abs(r - Double(whole)) * scale).rounded()))
    while frac.count < digits { frac = "0" + frac }
    return (r < 0 && whole == 0 ? "-" : "") + "\(whole).\(frac)"
}

func hex(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}

/// Memory of this process, from /proc/self/status and /proc/self/smaps_rollup (Linux).
public enum ProcessMemory {
    /// VmHWM: the peak resident set size.
    public static func peakRSSBytes() -> Int? { field("VmHWM:") }
    /// VmRSS: the current resident set size.
    public static func currentRSSBytes() -> Int? { field("VmRSS:") }
    /// AnonHugePages: the anonymous memory in transparent huge pages now.
    public static func hugePageBytes() -> Int? { field("AnonHugePages:", in: "/proc/self/smaps_rollup") }

    static func field(_ name: String, in path: String = "/proc/self/status") -> Int? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 256)
        while fgets(&buf, Int32(buf.count), f) != nil {
            let len = buf.firstIndex(of: 0) ?? buf.count
            let line = String(decoding: buf[..<len].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard line.hasPrefix(name) else { continue }
            let digits = line.dropFirst(name.count).filter { $0.isNumber }
            return Int(digits).map { $0 * 1024 }
        }
        return nil
    }
}
