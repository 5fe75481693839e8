#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Cluster
import Detector
import Discovery
import NodeMap
import Wire

/// Trace hash, progress reports and the small helpers.
extension Simulator {
    // MARK: Plumbing

    @inline(__always)
    func trace(_ kind: UInt64, _ value: UInt64) {
        var h = traceHash ^ (now &* 0x9E37_79B9_7F4A_7C15) ^ (kind << 56) ^ value
        h = (h ^ (h >> 31)) &* 0xBF58_476D_1CE4_E5B9
        traceHash = h ^ (h >> 29)
    }

    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        var g = SplitMix64(seed: a ^ (b &* 0x9E37_79B9_7F4A_7C15))
        return g.next()
    }

    func reportProgress() {
        let w = Self.wallClock()
        guard w - lastProgressWall >= progressInterval else { return }
        lastProgressWall = w
        progress?(
            SimProgress(
                virtualTime: now, events: events, running: liveCount, converged: convergedCount,
                wallSeconds: w - wallStart))
    }

    public var wallSeconds: Double { Self.wallClock() - wallStart }

    static func wallClock() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}
