import Cluster
import Detector
import Discovery
import NodeMap
@testable import Simulator

/// Settings shared by the simulator tests: the daemon's preset (`DetectorSettings.default`,
/// `DiscoverySettings.default`: the very values `discd` runs with), LAN latency 200 us..2 ms,
/// warnings only.
enum SimSetup {
    static let ms: UInt64 = 1_000_000
    static let s: UInt64 = 1_000_000_000

    static func detector() -> DetectorSettings {
        var d = DetectorSettings.default
        d.eventLevel = .warning
        return d
    }

    /// Discovery as the daemon configures it (the core applies 10-interval expiry while the detector runs).
    static func discovery() -> DiscoverySettings { .default }

    static func config(
        nodes: Int, seed: UInt64 = 7, loss: Double = 0, pauses: PauseModel? = nil, collisions: Int = 0,
        startSpread: UInt64 = 500_000_000
    ) -> SimConfig {
        SimConfig(
            nodes: nodes, seed: seed, loss: loss, discovery: discovery(), detector: detector(), startSpread: startSpread,
            collisions: collisions, pauses: pauses)
    }

    /// A simulator run to its first convergence (fails the test if it does not converge within `limit`).
    static func converged(_ config: SimConfig, limit: UInt64 = 30 * s) throws -> Simulator {
        let sim = try Simulator(config: config)
        guard sim.runUntilConverged(limit: limit) != nil else { throw NotConverged(at: sim.now) }
        return sim
    }

    struct NotConverged: Error { let at: UInt64 }
}
