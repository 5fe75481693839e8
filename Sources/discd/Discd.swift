import ArgumentParser
import Cluster
import Detector
import Discovery
import Glibc
import Logging
import NIOCore
import NIOPosix
import NodeMap
import UnixSignals

struct DiscdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd",
        abstract: "Cluster discovery and failure detection daemon (after openMosix's omdiscd).",
        discussion: """
            Announces this node by multicast on the cluster interfaces, keeps the node map in --map \
            (read it with showmap), and detects dead nodes with ring heartbeats.
            Signals: SIGUSR1 toggles debug logging; SIGTERM/SIGINT say leave, write the map and exit.
            Capacity planning: discd simulate --help.
            """)

    @Flag(name: [.short, .customLong("nodaemon")], help: "Stay in the foreground and log to stderr.")
    var nodaemon = false

    @Option(name: [.short, .customLong("interface")], help: "Cluster interfaces, comma-separated (default: the default route's).")
    var interface: String?

    @Option(name: [.short, .customLong("multicast-ttl")], help: "Routed multicast: send and receive on the first interface only, with this TTL/hop limit (1-255).")
    var multicastTTL: Int?

    @Option(help: "Address family: ipv4 or ipv6 (default: ipv4 if the first interface has an IPv4 address).")
    var family: String?

    @Option(help: "IPv4 multicast group.")
    var group4 = "239.192.77.77"

    @Option(help: "IPv6 multicast group.")
    var group6 = "ff05::d15c:77"

    @Option(help: "UDP port of the discovery protocol.")
    var port = 7777

    @Option(name: .customLong("heartbeat-port"), help: "UDP port for heartbeats (default: port + 1).")
    var heartbeatPort: Int?

    @Option(help: "Node map file, rewritten atomically on every change.")
    var map = "/run/discd/discd.map"

    @Option(help: "Status file: JSON counters, rewritten every second.")
    var status: String?

    @Option(help: "Cluster name (1-32 bytes); nodes of other clusters are ignored.")
    var cluster = "discd"

    @Option(name: .customLong("node-id"), help: "Explicit node ID (1-65535) instead of the one derived from the address.")
    var nodeID: Int?

    @Option(name: .customLong("announce-interval"), help: "Announce interval of a small cluster (stretches with size).")
    var announceInterval = "3s"

    @Option(help: "Heartbeat period η.")
    var period = "150ms"

    @Option(help: "Heartbeat timeout δ (at least 3η).")
    var timeout = "450ms"

    @Option(help: "Indirect probers asked to confirm a suspicion.")
    var confirmations = 3

    @Option(name: .customLong("confirm-window"), help: "How long probes may take before a suspect is declared dead.")
    var confirmWindow = "600ms"

    @Flag(name: .customLong("no-detector"), help: "Disable the heartbeat failure detector.")
    var noDetector = false

    @Flag(help: "Start with debug logging on.")
    var debug = false

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port \(port) is not a UDP port (1-65535)") }
        if let h = heartbeatPort, !(1...65535).contains(h) {
            throw ValidationError("--heartbeat-port \(h) is not a UDP port (1-65535)")
        }
        if let t = multicastTTL, !(1...255).contains(t) { throw ValidationError("--multicast-ttl \(t) is not in 1-255") }
        if let id = nodeID, !(1...65535).contains(id) { throw ValidationError("--node-id \(id) is not in 1-65535") }
        if let f = family, AddressFamily(rawValue: f) == nil { throw ValidationError("--family must be ipv4 or ipv6") }
        let c = cluster.utf8.count
        guard c >= 1, c <= 32 else { throw ValidationError("--cluster must be 1-32 bytes") }
        guard confirmations >= 0, confirmations <= 16 else { throw ValidationError("--confirmations must be 0-16") }
    }

    func run() async throws {
        do {
            try await runDaemon()
        } catch let e as ConfigError {
            fail(e.description)
        } catch let e as DurationText.Invalid {
            fail(e.description)
        } catch let e as DetectorSettings.Error {
            fail("\(e)")
        } catch let e as DiscoverySettings.Invalid {
            fail(e.description)
        }
    }

    private func fail(_ message: String) -> Never {
        writeStderr("discd: \(message)\n")
        Glibc.exit(1)
    }

    func runDaemon() async throws {
        // Everything that can be wrong with the configuration is checked before detaching.
        let startNanos = Engine.now()
        let names = (interface ?? "").split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
        var ifNames = names
        if ifNames.isEmpty {
            guard let d = Interfaces.defaultRouteInterface() else {
                throw ConfigError("no default route: name the cluster interface with -i")
            }
            ifNames = [d]
        }
        let (fam, ifaces) = try Interfaces.resolve(ifNames, family: family.flatMap(AddressFamily.init(rawValue:)))
        let groupText = fam == .ipv4 ? group4 : group6
        guard let group = IPAddress(groupText), group.isMulticast, group.isIPv4 == (fam == .ipv4) else {
            throw ConfigError("\(groupText) is not an \(fam == .ipv4 ? "IPv4" : "IPv6") multicast group")
        }
        let routed = multicastTTL != nil
        let active = routed ? [ifaces[0]] : ifaces
        let primary = ifaces[0].address
        let aliasSource: AliasSource = routed ? .routed : .interface
        let aliases = try Interfaces.otherAddresses(on: ifNames, family: fam, excluding: primary).map {
            Alias($0, source: aliasSource)
        }
        let detector: DetectorSettings? =
            noDetector
            ? nil
            : try DetectorSettings(
                period: try DurationText.parse(period), timeout: try DurationText.parse(timeout),
                confirmations: confirmations, confirmWindow: try DurationText.parse(confirmWindow))
        let discovery = try DiscoverySettings(
            baseInterval: try DurationText.parse(announceInterval), relay: !routed && active.count > 1)
        let hbPort = heartbeatPort ?? port + 1
        guard hbPort <= 65535, hbPort != port else { throw ConfigError("heartbeat port \(hbPort) is not usable") }
        let me = SelfInfo(
            address: primary, preferredID: nodeID.flatMap { NodeID($0) }, explicitID: nodeID != nil,
            aliases: aliases, heartbeatPort: UInt16(hbPort))

        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let wallNanos = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        let config = ClusterConfig(
            cluster: cluster, me: me, incarnation: UInt64(wallNanos / 1_000_000), discovery: discovery,
            detector: detector, seed: UInt64(bitPattern: wallNanos) ^ UInt64(getpid()),
            logLevel: .debug, timeBaseUnixNanos: wallNanos - Int64(startNanos))
        let shell = ShellSettings(
            family: fam, interfaces: active, group: group, port: port, heartbeatPort: hbPort, ttl: multicastTTL,
            mapPath: map, statusPath: status)

        // The map path must be writable before we promise anything.
        try checkWritable(map)
        if let s = status { try checkWritable(s) }

        if !nodaemon {
            guard daemon(0, 0) == 0 else { throw ConfigError("cannot detach: \(String(cString: strerror(errno)))") }
        }
        let target: LogSink.Target =
            nodaemon ? .stderr : (access("/run/systemd/journal/socket", F_OK) == 0 ? .journal : .syslog)
        let sink = LogSink(target: target, debug: debug, startNanos: startNanos)
        LoggingSystem.bootstrap { _ in SinkLogHandler(sink: sink) }

        let elg = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let node = ClusterNode(config: config, now: Engine.now())
        let engine = try Engine(loop: elg.next(), node: node, shell: shell, sink: sink)
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigusr1)
        try engine.start(group: elg)
        engine.watchInterfaces(
            names: ifNames, family: fam, primary: primary, initial: aliases.map(\.address), source: aliasSource, every: 5)
        sink.write(
            .notice,
            "discd started: node \(primary) on \(active.map { $0.name }.joined(separator: ",")) group \(group):\(port) "
                + "heartbeat port \(hbPort) cluster \(cluster)"
                + (routed ? " ttl \(multicastTTL!)" : "") + (discovery.relay ? " relaying" : "")
                + (detector.map { " detector η=\(DurationText.format($0.period)) δ=\(DurationText.format($0.timeout)) k=\($0.confirmations)" } ?? " detector off"))
        _ = discd_notify("READY=1")

        for await sig in signals {
            if sig == .sigusr1 {
                let on = sink.toggleDebug()
                sink.write(.notice, "debug logging \(on ? "on" : "off") (SIGUSR1)")
                continue
            }
            sink.write(.notice, "stopping on \(sig): sending leave")
            _ = discd_notify("STOPPING=1")
            engine.stop()
            break
        }
        try? await elg.shutdownGracefully()
        sink.write(.notice, "discd stopped")
    }

    private func checkWritable(_ path: String) throws {
        let dir: String
        if let slash = path.lastIndex(of: "/") {
            dir = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            dir = "."
        }
        var st = stat()
        if stat(dir, &st) != 0 {
            // Create the directory of the default path (/run/discd) and the like, one level.
            guard mkdir(dir, 0o755) == 0 else {
                throw ConfigError("cannot create directory \(dir) for \(path): \(String(cString: strerror(errno)))")
            }
        }
        let probe = path + ".probe.\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ConfigError("cannot write \(path): \(String(cString: strerror(errno)))") }
        close(fd)
        unlink(probe)
    }
}

import CSystemd

extension String {
    var trimmed: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

@main
enum Main {
    static func main() async {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "simulate" {
            await SimulateCommand.main(Array(args.dropFirst()))
        } else {
            await runOneLineErrors(DiscdCommand.self, args)
        }
    }
}

/// Parses and runs a command; a usage error is one line on stderr (`discd: …`) and exit code 64,
/// help and version requests print as usual.
func runOneLineErrors<C: AsyncParsableCommand>(_ type: C.Type, _ args: [String]) async {
    do {
        var cmd = try type.parseAsRoot(args)
        if var a = cmd as? AsyncParsableCommand {
            try await a.run()
        } else {
            try cmd.run()
        }
    } catch {
        if type.exitCode(for: error) == .success { type.exit(withError: error) }
        let msg = type.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        writeStderr("discd: \(msg)\n")
        Glibc.exit(type.exitCode(for: error).rawValue)
    }
}
