import ArgumentParser
import CSystemd
import Cluster
import Detector
import Discovery
import Glibc
import Logging
import NIOCore
import NIOPosix
import MapStore
import NodeMap
import ServiceLifecycle
import UnixSignals

struct DiscdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd",
        abstract: "Cluster discovery and failure detection daemon (after openMosix's omdiscd).",
        discussion: """
            Announces this node by multicast on the cluster interfaces, keeps the node map in --map \
            (read it with showmap), and detects dead nodes with ring heartbeats.
            Without -n, discd detaches once it runs (the command returns 0 when the daemon is up, or \
            prints why it could not start and returns 1) and logs to the journal, or to syslog.
            Signals: SIGUSR1 toggles debug logging; SIGTERM/SIGINT say leave, write the map and exit 0.
            Capacity planning with the same protocol options: discd simulate --help.
            The event stream (membership, process and configuration events): discd events --help.
            Process exits known on every node at once: discd watch --help.
            The kernel modules (kernel/README.md): discd kernel --help.
            Cluster keys (docs/SECURITY.md): discd keygen --help; SIGHUP reloads --key-file.
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

    @OptionGroup(title: "Protocol")
    var proto: ProtocolOptions

    @Option(name: .customLong("log-format"), help: "Log lines as text or as JSON lines (one event per line).")
    var logFormat = "text"

    @Flag(help: "Start with debug logging on.")
    var debug = false

    @Option(help: "Control socket: event stream subscriptions (discd events).")
    var control = defaultControlPath

    @Option(name: .customLong("hook"), help: ArgumentHelp(
        "Run PROGRAM for each stream event (of the NAMEs given), fields in its environment (repeatable).",
        valueName: "[NAME,...=]PROGRAM"))
    var hooks: [String] = []

    @Option(name: .customLong("hook-timeout"), help: "Time limit of one hook run (then SIGKILL).")
    var hookTimeout = "10s"

    @Option(name: .customLong("hook-concurrency"), help: "Hooks running at once, at most (1-64).")
    var hookConcurrency = 4

    @Flag(name: .customLong("no-rdma"), help: "Do not use RDMA (InfiniBand/RoCE) even where a device exists: IP only.")
    var noRDMA = false

    @Flag(
        name: .customLong("no-kernel"),
        help: "Do not use discd's kernel modules even where they are loaded (no /dev/heartbeat exits, no map for fdmod).")
    var noKernel = false

    @Option(
        name: .customLong("key-file"),
        help: ArgumentHelp(
            "Cluster key file (discd keygen PATH): every datagram is signed and checked; mode 0600.",
            valueName: "path"))
    var keyFile: String?

    @Option(
        name: .customLong("allow-from"),
        help: ArgumentHelp(
            "Take datagrams only from these sources (comma-separated addresses or CIDRs); others are dropped.",
            valueName: "cidrs"))
    var allowFrom: String?

    @Flag(
        name: .customLong("trust-rdma-immediates"),
        help: "With --key-file, still believe RDMA immediate-only process notices (they cannot be signed).")
    var trustRDMAImmediates = false

    @Option(name: .customLong("rdma-device"), help: "RDMA device to use (default: the one serving the first cluster interface's address).")
    var rdmaDevice: String?

    @Option(name: .customLong("rdma-port"), help: "Port of the RDMA device (default: the port serving the cluster interface).")
    var rdmaPort: Int?

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
        guard LogSink.Format(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json") }
        if !(1...64).contains(hookConcurrency) { throw ValidationError("--hook-concurrency \(hookConcurrency) is not in 1-64") }
        if let p = rdmaPort, !(1...255).contains(p) { throw ValidationError("--rdma-port \(p) is not in 1-255") }
        if trustRDMAImmediates && keyFile == nil {
            throw ValidationError("--trust-rdma-immediates needs --key-file (without keys every notice is believed)")
        }
        if noRDMA, rdmaDevice != nil || rdmaPort != nil {
            throw ValidationError("--no-rdma cannot be combined with --rdma-device or --rdma-port")
        }
    }

    func run() async throws {
        let detached = Detach.readyFD()
        do {
            let setup = try resolve()
            if !nodaemon && detached == nil {
                // The parent: everything was checked; start the daemon and wait until it says ready.
                Glibc.exit(try Detach.spawnAndWait())
            }
            try await serve(setup, readyFD: detached)
        } catch {
            let message: String =
                switch error {
                case let e as ConfigError: e.description
                case let e as DurationText.Invalid: e.description
                case let e as DetectorSettings.Error: e.description
                case let e as DiscoverySettings.Invalid: e.description
                default: "\(error)"
                }
            if let fd = detached { Detach.report(fd, "ERR " + message) }
            writeStderr("discd: \(message)\n")
            Glibc.exit(1)
        }
    }

    /// Everything the daemon needs, resolved and checked before it starts (or detaches).
    struct Setup {
        var config: ClusterConfig
        var family: AddressFamily
        var active: [ClusterInterface]
        var names: [String]
        var group: IPAddress
        var heartbeatPort: Int
        var aliasSource: AliasSource
        var aliases: [Alias]
        var detectorText: String
        var startNanos: UInt64
        var hooks: [HookRunner.Hook]
        var hookTimeoutMillis: Int32
        var allowList: SourceAllowList?
        /// Why the map file left by the last run could not be read (nil: fine or absent).
        var previousMapProblem: String?
    }

    func resolve() throws -> Setup {
        let startNanos = NodeDriver.now().nanos
        var ifNames = (interface ?? "").split(separator: ",").map { String($0).trimmed }.filter { !$0.isEmpty }
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
        let detector = try proto.detector(eventLevel: .info)
        let discovery = try proto.discovery(relay: !routed && active.count > 1)
        let hbPort = heartbeatPort ?? port + 1
        guard hbPort <= 65535, hbPort != port else { throw ConfigError("heartbeat port \(hbPort) is not usable") }
        let me = SelfInfo(
            address: primary, preferredID: nodeID.flatMap { NodeID($0) }, explicitID: nodeID != nil,
            aliases: aliases, heartbeatPort: UInt16(hbPort))
        try checkWritable(map)
        if let s = status { try checkWritable(s) }
        try checkWritable(control)
        if let want = rdmaDevice {
            let present = RDMATransport.deviceNames()
            guard present.contains(want) else {
                throw ConfigError(
                    "RDMA device \(want) not found"
                        + (present.isEmpty ? " (this node has no RDMA device)" : " (present: \(present.joined(separator: ", ")))"))
            }
        }

        let keyring = try keyFile.map { path throws(ConfigError) in try KeyFile.load(path) }

        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let wallNanos = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
        let previous = PreviousMapFile.inspect(path: map, me: primary)
        var config = ClusterConfig(
            cluster: cluster, me: me, incarnation: Self.startIncarnation(wallNanos: wallNanos, previous: previous.incarnation),
            discovery: discovery, detector: detector, seed: UInt64(bitPattern: wallNanos) ^ UInt64(getpid()),
            logLevel: .info, timeBaseUnixNanos: wallNanos - Int64(startNanos))
        if let keyring {
            // Replay counters start at the incarnation (wall-clock ms, never lower than the last
            // life's) << 16: above every counter of an earlier life of this node.
            config.auth = AuthConfig(
                keyring: keyring, counterSeed: config.incarnation << 16, trustImmediates: trustRDMAImmediates)
        }
        let detText =
            detector.map {
                "η=\(DurationText.format($0.period)) δ=\(DurationText.format($0.timeout)) k=\($0.confirmations) "
                    + "confirm=\(DurationText.format($0.confirmWindow))"
            } ?? "off"
        let hookList = try hooks.map { try HookRunner.Hook(parsing: $0) }
        let hookTimeoutNanos = try DurationText.parse(hookTimeout)
        guard hookTimeoutNanos >= 1_000_000, hookTimeoutNanos <= 3_600_000_000_000 else {
            throw ConfigError("--hook-timeout \(hookTimeout) is not between 1ms and 1h")
        }
        return Setup(
            config: config, family: fam, active: active, names: ifNames, group: group, heartbeatPort: hbPort,
            aliasSource: aliasSource, aliases: aliases, detectorText: detText, startNanos: startNanos, hooks: hookList,
            hookTimeoutMillis: Int32(hookTimeoutNanos / 1_000_000),
            allowList: try allowFrom.map { text throws(ConfigError) in try SourceAllowList(parsing: text) },
            previousMapProblem: previous.problem)
    }

    /// A new life's incarnation: wall-clock milliseconds, but above the one this node had in its
    /// last map file, so a clock stepped back across a restart cannot make it go down. (Peers that
    /// remember a higher one still tell the node, which then refutes past it.)
    static func startIncarnation(wallNanos: Int64, previous: UInt64?) -> UInt64 {
        let wall = UInt64(max(wallNanos, 0) / 1_000_000)
        guard let previous else { return wall }
        return max(wall, previous &+ 1)
    }

    func serve(_ s: Setup, readyFD: Int32?) async throws {
        let daemonMode = !nodaemon
        let target: LogSink.Target =
            !daemonMode ? .stderr : (access("/run/systemd/journal/socket", F_OK) == 0 ? .journal : .syslog)
        let sink = LogSink(
            target: target, format: LogSink.Format(rawValue: logFormat) ?? .text, debug: debug, startNanos: s.startNanos)
        LoggingSystem.bootstrap { _ in SinkLogHandler(sink: sink) }
        let logger = Logger(label: "discd")
        // The last run's map file: a corrupt one is never trusted (its incarnation was not used)
        // and is set aside for inspection; the first write replaces it. A killed writer's
        // temporary files are removed.
        PreviousMapFile.removeStaleTemporaries(of: map)
        if let status { PreviousMapFile.removeStaleTemporaries(of: status) }
        if let problem = s.previousMapProblem {
            sink.write(DaemonEvent.mapFileCorrupt(path: map, error: problem, movedTo: PreviousMapFile.setAside(map)))
        }

        let elg = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = elg.next()
        let udp = try UDPTransport(
            loop: loop, family: s.family, interfaces: s.active, group: s.group, port: port,
            heartbeatPort: s.heartbeatPort, ttl: multicastTTL, sink: sink)
        var transports: [any Transport] = [udp]
        if !noRDMA {
            transports.append(
                RDMATransport(
                    loop: loop, interfaces: s.active, group: s.group, ttl: multicastTTL,
                    options: RDMAOptions(enabled: true, device: rdmaDevice, port: rdmaPort), sink: sink))
        }
        let publisher = MapPublisher(mapPath: map, statusPath: status, sink: sink)
        let driver = NodeDriver(
            loop: loop, node: ClusterNode(config: s.config, now: NodeDriver.now()), transports: transports,
            publisher: publisher, sink: sink)
        let hub = EventHub(loop: loop, epoch: s.config.incarnation)
        driver.hub = hub
        if !s.hooks.isEmpty {
            hub.hooks = HookRunner(hooks: s.hooks, timeoutMillis: s.hookTimeoutMillis, concurrency: hookConcurrency, sink: sink)
        }
        let watcher = ProcessWatcher(loop: loop)
        watcher.exited = { w, status in driver.processExited(w, status: status) }
        driver.watcher = watcher
        driver.allowList = s.allowList
        let kernel = KernelLink(loop: loop, sink: sink, enabled: !noKernel)
        kernel.exited = { e, name in driver.kernelExited(e, name: name) }
        driver.kernel = kernel
        sink.observeConfig { item in loop.execute { hub.publish(item) } }
        let controlServer = ControlServer(path: control, loop: loop, hub: hub, watcher: watcher, kernel: kernel, sink: sink)
        try await controlServer.bind()
        let interfaceWatcher = InterfaceWatcher(
            loop: loop, names: s.names, family: s.family, primary: s.config.me.address,
            initial: s.aliases.map(\.address), source: s.aliasSource, sink: sink, driver: driver)
        let started = DaemonEvent.started(
            node: s.config.me.address, interfaces: s.active.map(\.name), group: s.group.description, port: port,
            heartbeatPort: s.heartbeatPort, cluster: cluster, ttl: multicastTTL,
            relay: s.config.discovery.relay, detector: s.detectorText, incarnation: s.config.incarnation,
            pid: getpid(), daemon: daemonMode)
        let node = NodeService(driver: driver, sink: sink, started: started, readyFD: readyFD)
        let debugToggle = DebugSignalService(sink: sink, driver: driver)
        let keyReload = KeyReloadService(path: keyFile, sink: sink, driver: driver)
        // Graceful shutdown runs in reverse order: the SIGUSR1 listener and the interface watcher
        // stop first, then the node (leave, final map), then the publisher (pending writes).
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: publisher), .init(service: node), .init(service: controlServer), .init(service: kernel),
                    .init(service: interfaceWatcher),
                    .init(service: debugToggle), .init(service: keyReload),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        try? await elg.shutdownGracefully()
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

/// The node: transports up, protocol running; on graceful shutdown (SIGTERM, SIGINT) it says
/// leave, hands the final map to the publisher and closes the transports.
struct NodeService: Service {
    let driver: NodeDriver
    let sink: LogSink
    let started: DaemonEvent
    let readyFD: Int32?

    func run() async throws {
        try await driver.start()
        sink.write(started)
        if let fd = readyFD { Detach.report(fd, "READY") }
        _ = discd_notify("READY=1")
        try? await gracefulShutdown()
        sink.write(DaemonEvent.stopping(signal: "SIGTERM/SIGINT"))
        _ = discd_notify("STOPPING=1")
        await driver.stop()
    }
}

/// SIGUSR1 toggles debug logging on the running daemon.
struct DebugSignalService: Service {
    let sink: LogSink
    let driver: NodeDriver

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sigusr1).cancelOnGracefulShutdown() {
            let on = sink.toggleDebug()
            driver.setDebug(on)
            sink.write(DaemonEvent.debugToggled(on: on))
        }
    }
}

extension String {
    var trimmed: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

/// Where the daemon listens for control requests and `discd events` connects, by default.
let defaultControlPath = "/run/discd/control.sock"

@main
enum Main {
    static func main() async {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "simulate" {
            await SimulateCommand.main(Array(args.dropFirst()))
        } else if args.first == "events" {
            await runOneLineErrors(EventsCommand.self, Array(args.dropFirst()))
        } else if args.first == "watch" {
            await runOneLineErrors(WatchCommand.self, Array(args.dropFirst()))
        } else if args.first == "keygen" {
            await runOneLineErrors(KeygenCommand.self, Array(args.dropFirst()))
        } else if args.first == "kernel" {
            await runOneLineErrors(KernelCommand.self, Array(args.dropFirst()))
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
