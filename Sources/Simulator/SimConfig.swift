#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Detector
import Discovery
import NodeMap

/// One-way latency of the simulated LAN: `base` plus a jitter drawn from `jitter`.
///
/// The distribution is held as `buckets` equal-width slices of [base, max] with their probabilities.
/// A multicast is delivered once per non-empty slice, at the slice's midpoint, to the receivers that
/// drew it (one event per slice, not per receiver); a unicast is delivered at a uniform point of the
/// slice it drew. Different draws for two datagrams of one sender reorder them.
public struct LatencyModel: Sendable, Equatable {
    public enum Jitter: Sendable, Equatable {
        /// Uniform in [base, max].
        case uniform
        /// base + J, J lognormal with median (max − base) / 4 and shape `sigma`, cut at max: a long tail.
        case lognormal(sigma: Double)
    }

    public let base: UInt64
    public let max: UInt64
    public let jitter: Jitter
    /// Start of each slice, and its width.
    public let sliceStart: [UInt64]
    public let sliceWidth: UInt64
    /// Cumulative probability of the slices, in units of 2^-32.
    let cumulative: [UInt64]

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public init(base: UInt64, max: UInt64, jitter: Jitter = .uniform, buckets: Int = 16) throws {
        guard base >= 1_000 else { throw Invalid(description: "latency must be at least 1us (got \(base) ns)") }
        guard max >= base else { throw Invalid(description: "latency range \(base)..\(max) ns is empty") }
        guard max <= 10_000_000_000 else { throw Invalid(description: "latency above 10s is not a LAN") }
        guard (1...256).contains(buckets) else { throw Invalid(description: "latency buckets must be 1-256") }
        if case .lognormal(let s) = jitter, !(s > 0 && s <= 4) {
            throw Invalid(description: "lognormal sigma must be in (0, 4]")
        }
        self.base = base
        self.max = max
        self.jitter = jitter
        let span = max - base
        let k = span == 0 ? 1 : buckets
        let width = Swift.max(span / UInt64(k), 1)
        self.sliceWidth = span == 0 ? 0 : width
        self.sliceStart = (0..<k).map { base + UInt64($0) * width }
        var weights = [Double](repeating: 1, count: k)
        if case .lognormal(let sigma) = jitter, span > 0 {
            // P(J in slice) from the lognormal CDF; the part beyond `max` goes to the last slice.
            let median = Double(span) / 4
            func cdf(_ x: Double) -> Double {
                x <= 0 ? 0 : 0.5 * erfc(-(log(x / median)) / (sigma * 2.0.squareRoot()))
            }
            for i in 0..<k {
                let lo = Double(i) * Double(width)
                let hi = i == k - 1 ? Double.infinity : Double(i + 1) * Double(width)
                weights[i] = (hi.isInfinite ? 1 : cdf(hi)) - cdf(lo)
            }
        }
        let total = weights.reduce(0, +)
        var acc = 0.0
        var cum: [UInt64] = []
        for w in weights {
            acc += w / total
            cum.append(UInt64((acc * 4_294_967_296).rounded()))
        }
        cum[cum.count - 1] = 1 << 32
        self.cumulative = cum
    }

    /// Uniform 200us..2ms.
    public static let lan = try! LatencyModel(base: 200_000, max: 2_000_000)

    public var sliceCount: Int { sliceStart.count }

    /// The slice a 32-bit draw falls in.
    @inline(__always)
    func slice(_ r32: UInt64) -> Int {
        if cumulative.count == 1 { return 0 }
        if case .uniform = jitter { return Int((r32 &* UInt64(cumulative.count)) >> 32) }
        var i = 0
        while cumulative[i] <= r32 { i += 1 }
        return i
    }

    /// Delivery delay of a multicast copy in slice `i` (its midpoint).
    @inline(__always)
    func midpoint(_ i: Int) -> UInt64 { sliceStart[i] + sliceWidth / 2 }

    public var description: String {
        let j: String
        switch jitter {
        case .uniform: j = "uniform"
        case .lognormal(let s): j = "lognormal σ=\(s)"
        }
        return "\(DurationText.format(base))..\(DurationText.format(max)) \(j)"
    }
}

/// Process pauses (GC, descheduling, SIGSTOP): a node receives nothing and ticks nothing for
/// `length`, then its queued datagrams arrive and its timers fire late. Pauses start as a Poisson
/// process: each running node is paused on average once every `meanInterval`.
public struct PauseModel: Sendable, Equatable {
    public var length: UInt64
    public var meanInterval: UInt64
    public init(length: UInt64, meanInterval: UInt64 = 10_000_000_000) {
        self.length = length
        self.meanInterval = meanInterval
    }
}

/// Everything that defines a simulated run: with the same configuration (seed included) a run is
/// reproduced event for event.
public struct SimConfig: Sendable {
    public var nodes: Int
    public var seed: UInt64
    public var cluster: String
    public var latency: LatencyModel
    /// Probability that one copy of a datagram is lost (each receiver of a multicast draws its own).
    public var loss: Double
    /// Probability that a copy is delivered twice (the duplicate draws its own latency).
    public var duplication: Double
    public var discovery: DiscoverySettings
    /// nil runs discovery only.
    public var detector: DetectorSettings?
    /// Nodes start at uniform random times in [0, startSpread).
    public var startSpread: UInt64
    /// The last `collisions` nodes get addresses 10.1.B.C whose last two octets (the derived ID)
    /// equal those of earlier nodes 10.0.B.C.
    public var collisions: Int
    public var pauses: PauseModel?
    /// Receive buffer of each of a node's two sockets, in bytes of kernel memory (each queued
    /// datagram costs its length plus 768 bytes, as an skb does): a long pause overflows it.
    public var socketBuffer: Int
    /// Least severe log line the nodes produce (warnings: building strings costs time).
    public var logLevel: LogLevel
    public var heartbeatPort: UInt16

    public init(
        nodes: Int, seed: UInt64 = 1, cluster: String = "sim", latency: LatencyModel = .lan, loss: Double = 0,
        duplication: Double = 0, discovery: DiscoverySettings = .default, detector: DetectorSettings?,
        startSpread: UInt64 = 1_000_000_000, collisions: Int = 0, pauses: PauseModel? = nil,
        socketBuffer: Int = 212_992, logLevel: LogLevel = .warning, heartbeatPort: UInt16 = 7778
    ) {
        self.nodes = nodes
        self.seed = seed
        self.cluster = cluster
        self.latency = latency
        self.loss = loss
        self.duplication = duplication
        self.discovery = discovery
        self.detector = detector
        self.startSpread = startSpread
        self.collisions = collisions
        self.pauses = pauses
        self.socketBuffer = socketBuffer
        self.logLevel = logLevel
        self.heartbeatPort = heartbeatPort
    }

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public func validate() throws {
        guard nodes >= 1 else { throw Invalid(description: "need at least one node") }
        guard collisions >= 0, collisions <= nodes / 2 else {
            throw Invalid(description: "collisions must be between 0 and half the nodes (\(nodes / 2))")
        }
        guard nodes - collisions <= 65_535 else {
            throw Invalid(description: "at most 65535 nodes fit the 16-bit ID space")
        }
        guard (0...1).contains(loss), loss < 1 else { throw Invalid(description: "loss must be in [0, 1)") }
        guard (0...1).contains(duplication), duplication < 1 else {
            throw Invalid(description: "duplication must be in [0, 1)")
        }
        let n = cluster.utf8.count
        guard n >= 1, n <= 32 else { throw Invalid(description: "cluster name must be 1-32 bytes") }
        if let p = pauses {
            guard p.length > 0, p.meanInterval > 0 else {
                throw Invalid(description: "pause length and interval must be positive")
            }
        }
    }

    /// The address of node `i`: 10.0.0.0 + i + 1 (derived ID i + 1), or 10.1.B.C for the colliders.
    public func address(of i: Int) -> IPAddress {
        let plain = nodes - collisions
        if i < plain { return IPAddress(v4: 0x0A00_0000 + UInt32(i + 1)) }
        // Collider j shares the low 16 bits with a plain node spread over the plain range.
        let j = i - plain
        let victim = (j * plain) / Swift.max(collisions, 1)
        return IPAddress(v4: 0x0A01_0000 + UInt32(victim + 1) & 0xFFFF)
    }

    /// The bound within which every survivor must know of a crash:
    /// δ + confirm window + (ceil(log2 N) + 2) × the largest one-way latency. The latency term covers
    /// the crashed node's last heartbeat in flight, the death notice's multicast, and the hops of the
    /// circulant-graph fallback for survivors that lost the multicast.
    public func detectionBound(members: Int) -> UInt64? {
        guard let d = detector else { return nil }
        return d.timeout.nanos + d.confirmWindow.nanos + UInt64(ceilLog2(members) + 2) * latency.max
    }
}
