import ArgumentParser
import Cluster
import Detector
import Discovery
import Glibc
import NodeMap
import Simulator

/// `discd simulate`: the protocol of N nodes (the daemon's own `ClusterNode`) on a simulated LAN in
/// virtual time, for capacity planning and to check what the configuration promises.
struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd simulate",
        abstract: "Simulate a cluster in virtual time (capacity planning).",
        discussion: """
            Starts --nodes nodes at random times within --start-spread, runs until every live map \
            holds exactly the live nodes, waits --settle, crashes --crash random nodes (and stops \
            --stop others cleanly), and runs until --duration of virtual time. Prints the convergence \
            time, how long each survivor took to learn of each crash (p50/p90/p99/max) against the \
            bound the configuration promises, false deaths, network load per node and memory. \
            Same seed, same run. Progress goes to stderr. See docs/SIMULATOR.md.

            Where the kernel offers transparent huge pages, the simulator runs itself again once \
            with GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1 (its maps then sit \
            in 2 MiB pages); a GLIBC_TUNABLES that names glibc.malloc.hugetlb is left as it is.
            """)

    @Option(help: "Number of nodes.")
    var nodes = 1000

    @Option(help: "Seed of the run (network, faults, nodes' own randomness).")
    var seed: UInt64 = 1

    @Option(help: "Virtual time to run (longer if a crash is still being learned of at the end).")
    var duration = "30s"

    @Option(help: "Probability that a copy of a datagram is lost (0-1).")
    var loss = 0.0

    @Option(help: "Probability that a copy of a datagram is delivered twice (0-1).")
    var duplication = 0.0

    @Option(help: "One-way latency range MIN..MAX.")
    var latency = "200us..2ms"

    @Option(name: .customLong("latency-dist"), help: "Latency distribution: uniform, or lognormal[:SIGMA] (median at a quarter of the range, long tail cut at MAX).")
    var latencyDist = "uniform"

    @OptionGroup(title: "Protocol (the daemon's options, with the daemon's defaults)")
    var proto: ProtocolOptions

    @Option(name: .customLong("announce-rate"), help: "Cluster-wide announce budget per second (the interval stretches to N / rate).")
    var announceRate = ProtocolOptions.discoveryDefaults.aggregateRate

    @Option(name: .customLong("expiry-factor"), help: "Announce intervals of silence before discovery declares a node dead (default: the core's, 10 while the detector runs, 3.5 without).")
    var expiryFactor: Double?

    @Option(name: .customLong("wave-copies"), help: "Announces per node in a re-announce wave (restart storm, partition heal); 0 turns waves off.")
    var waveCopies = ProtocolOptions.discoveryDefaults.waveCopies

    @Option(name: .customLong("purge-after"), help: "Dead and left nodes are purged from maps this long after last heard.")
    var purgeAfter = DurationText.format(ProtocolOptions.discoveryDefaults.purgeAfter)

    @Option(name: .customLong("start-spread"), help: "Nodes start at random times within this.")
    var startSpread = "1s"

    @Option(help: "Nodes to crash once the cluster has converged and settled.")
    var crash = 1

    @Option(help: "Nodes to stop cleanly (leave) at the same time.")
    var stop = 0

    @Option(name: .customLong("crash-at"), help: "Virtual time of the crash (default: convergence + --settle).")
    var crashAt: String?

    @Option(help: "Wait after convergence before the crash (default: the detector's startup grace + 1s).")
    var settle: String?

    @Option(name: .customLong("restart-after"), help: "Restart crashed and stopped nodes (new incarnation) after this.")
    var restartAfter: String?

    @Option(help: "Process pauses of this length (GC, descheduling); see --pause-every.")
    var pause: String?

    @Option(name: .customLong("pause-every"), help: "Mean interval between two pauses of one node.")
    var pauseEvery = "10s"

    @Option(help: "Partition AT+DURATION (e.g. 10s+5s): the network splits in two, then heals.")
    var partition: String?

    @Option(name: .customLong("partition-fraction"), help: "Share of the nodes on the smaller side of the partition.")
    var partitionFraction = 0.5

    @Option(help: "Nodes whose address collides in its last two octets (derived ID) with another's.")
    var collisions = 0

    @Option(name: .customLong("socket-buffer"), help: "Receive buffer per socket in bytes (overflows during pauses).")
    var socketBuffer = 212_992

    @Option(name: .customLong("progress"), help: "Progress line on stderr every this many wall seconds (0: none).")
    var progressSeconds = 5.0

    @Option(name: .customLong("log-level"), help: "Print the nodes' log lines at this level and above to stderr (debug, info, notice, warning, error; default: none).")
    var logLevel: String?

    @Option(help: "OBSERVER:TARGET: print every change of node OBSERVER's map entry for node TARGET, and TARGET's multicasts (stderr).")
    var diagnose: String?

    @Flag(help: "Print the report as JSON.")
    var json = false

    func validate() throws {
        guard nodes >= 1, nodes <= 65_535 else { throw ValidationError("--nodes must be 1-65535") }
        guard crash >= 0, stop >= 0, crash + stop < nodes else {
            throw ValidationError("--crash + --stop must leave at least one node running")
        }
        guard partitionFraction > 0, partitionFraction <= 0.5 else {
            throw ValidationError("--partition-fraction must be in (0, 0.5]")
        }
        guard announceRate > 0 else { throw ValidationError("--announce-rate must be positive") }
    }

    func run() async throws {
        Self.runAgainWithHugePages()
        do {
            try simulate()
        } catch let e as ValidationError {
            throw e
        } catch {
            writeStderr("discd simulate: \(error)\n")
            throw ExitCode(2)
        }
    }

    /// The simulator holds N maps of N entries (3 GiB at 10,000 nodes), and each datagram it
    /// delivers reads a few lines of one of them, on a page of its own: with 4 KiB pages nearly
    /// every one of those reads also missed the TLB. glibc backs its heap with transparent huge
    /// pages only when told so before the process starts (a tunable), and only for the main arena's
    /// heap with `arena_max=1` (the simulation runs on a worker thread). So, once, the process runs
    /// itself again with them; a failed exec goes on as it is. The run, and its trace, are the same
    /// either way: only the page size differs (10,000 nodes: about 10 % less CPU, the same peak
    /// RSS; docs/SIMULATOR.md).
    static func runAgainWithHugePages() {
        let name = "GLIBC_TUNABLES"
        let current = getenv(name).map { String(cString: $0) }
        if let c = current, c.contains("glibc.malloc.hugetlb") { return }
        // "always [madvise] never": huge pages where asked for. Not in a kernel without them.
        guard let thp = try? Interfaces.readText("/sys/kernel/mm/transparent_hugepage/enabled"), thp.contains("["),
            !thp.contains("[never]")
        else { return }
        let tunables = "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1"
        setenv(name, current.map { $0 + ":" + tunables } ?? tunables, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // Still here: the exec failed. Run as is, without the tunables.
        if let c = current { setenv(name, c, 1) } else { unsetenv(name) }
    }

    private func parseLatency() throws -> LatencyModel {
        let range = latency.components(separatedBy: "..")
        let lo: UInt64
        let hi: UInt64
        if range.count == 2 {
            lo = try DurationText.parse(range[0])
            hi = try DurationText.parse(range[1])
        } else if let v = try? DurationText.parse(latency) {
            lo = v
            hi = v
        } else {
            throw ValidationError("--latency \(latency): expected MIN..MAX, e.g. 200us..2ms")
        }
        var jitter = LatencyModel.Jitter.uniform
        if latencyDist.hasPrefix("lognormal") {
            let sigma = latencyDist.split(separator: ":").dropFirst().first.flatMap { Double($0) } ?? 0.6
            jitter = .lognormal(sigma: sigma)
        } else if latencyDist != "uniform" {
            throw ValidationError("--latency-dist must be uniform or lognormal[:SIGMA]")
        }
        return try LatencyModel(base: lo, max: hi, jitter: jitter, buckets: jitter == .uniform ? 16 : 32)
    }

    private func simulate() throws {
        let until = try DurationText.parse(duration)
        let detector = try proto.detector(eventLevel: logLevel == nil ? .warning : .debug)
        var discovery = try proto.discovery(aggregateRate: announceRate, purgeAfter: try DurationText.span(purgeAfter))
        guard (0...8).contains(waveCopies) else { throw ValidationError("--wave-copies must be 0 to 8") }
        discovery.waveCopies = waveCopies
        if let f = expiryFactor {
            guard f >= 2 else { throw ValidationError("--expiry-factor must be at least 2") }
            discovery.expiryFactor = f
            discovery.detectorExpiryFactor = f
        }
        let level = try logLevel.map { try Self.level($0) }
        var config = SimConfig(
            nodes: nodes, seed: seed, latency: try parseLatency(), loss: loss, duplication: duplication,
            discovery: discovery, detector: detector, startSpread: try DurationText.parse(startSpread),
            collisions: collisions, socketBuffer: socketBuffer, logLevel: level ?? .warning)
        if let p = pause {
            config.pauses = PauseModel(length: try DurationText.parse(p), meanInterval: try DurationText.parse(pauseEvery))
        }
        let settleTime =
            try settle.map { try DurationText.parse($0) }
            ?? ((detector?.startupGrace(memberCount: nodes).nanos ?? 0) + 1_000_000_000)
        let fixedCrash = try crashAt.map { try DurationText.parse($0) }
        let restartDelay = try restartAfter.map { try DurationText.parse($0) }
        var partitionWindow: (at: UInt64, end: UInt64)?
        if let p = partition {
            let parts = p.split(separator: "+").map(String.init)
            guard parts.count == 2 else { throw ValidationError("--partition \(p): expected AT+DURATION, e.g. 10s+5s") }
            let at = try DurationText.parse(parts[0])
            partitionWindow = (at, at + (try DurationText.parse(parts[1])))
        }

        let sim = try Simulator(config: config)
        if let d = diagnose {
            let p = d.split(separator: ":").compactMap { Int($0) }
            guard p.count == 2, p.allSatisfy({ (0..<nodes).contains($0) }) else {
                throw ValidationError("--diagnose expects OBSERVER:TARGET node indices")
            }
            sim.diagnose = (p[0], p[1])
        }
        if let level {
            sim.logSink = { t, i, e in
                guard e.level >= level else { return }
                writeStderr("[\(ms(t))] node \(i) \(e.level): \(e.text)\n")
            }
        }
        if progressSeconds > 0 {
            sim.progressInterval = progressSeconds
            sim.progress = { p in
                let rss = ProcessMemory.currentRSSBytes().map { " rss \($0 / 1_048_576) MiB" } ?? ""
                writeStderr(
                    "simulate: virtual \(ms(p.virtualTime)), \(p.running) running, \(p.converged) maps complete, "
                        + "\(p.events) events, wall \(Int(p.wallSeconds)) s\(rss)\n")
            }
        }
        func note(_ s: String) {
            if progressSeconds > 0 { writeStderr("simulate: [\(ms(sim.now))] \(s)\n") }
        }

        let scenario = Scenario(
            duration: until, crash: crash, stop: stop, crashAt: fixedCrash, settle: settleTime,
            restartAfter: restartDelay, partition: partitionWindow, partitionFraction: partitionFraction)
        scenario.run(on: sim, note: note)

        for line in sim.diagnosis { writeStderr("diagnose: \(line)\n") }
        let report = SimReport(sim)
        print(json ? report.json() : report.text(), terminator: "")
        if let b = config.detectionBound(members: nodes), !json, crash > 0 {
            print(
                "bound = δ + confirm window + (ceil(log2 N) + 2) × max latency = \(ms(b)) "
                    + "(δ \(ms(detector!.timeout.nanos)), window \(ms(detector!.confirmWindow.nanos)), latency ≤ \(ms(config.latency.max)))")
        }
    }

    static func level(_ s: String) throws -> LogLevel {
        switch s {
        case "debug": .debug
        case "info": .info
        case "notice": .notice
        case "warning": .warning
        case "error": .error
        default: throw ValidationError("--log-level must be debug, info, notice, warning or error")
        }
    }
}

extension String {
    fileprivate func components(separatedBy sep: String) -> [String] {
        var out: [String] = []
        var rest = Substring(self)
        while let r = rest.firstRange(of: sep) {
            out.append(String(rest[..<r.lowerBound]))
            rest = rest[r.upperBound...]
        }
        out.append(String(rest))
        return out
    }
}
