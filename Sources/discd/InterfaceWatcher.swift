import Cluster
import NIOCore
import NodeMap
import ServiceLifecycle

/// Polls the cluster interfaces' addresses on the event loop and tells the node when its aliases
/// change (an address added or removed). Cancelled on stop: nothing is scheduled after that.
final class InterfaceWatcher: Service, @unchecked Sendable {
    let loop: EventLoop
    let names: [String]
    let family: AddressFamily
    let primary: IPAddress
    let source: AliasSource
    let sink: LogSink
    let driver: NodeDriver
    private var last: [IPAddress]
    private var primaryMissing = false
    private var task: RepeatedTask?
    /// Polls done so far (on the loop).
    private(set) var polls = 0

    init(
        loop: EventLoop, names: [String], family: AddressFamily, primary: IPAddress, initial: [IPAddress],
        source: AliasSource, sink: LogSink, driver: NodeDriver
    ) {
        self.loop = loop
        self.names = names
        self.family = family
        self.primary = primary
        self.last = initial
        self.source = source
        self.sink = sink
        self.driver = driver
    }

    /// As a service: polls every 5 s until graceful shutdown.
    func run() async throws {
        start(every: .seconds(5))
        try? await gracefulShutdown()
        stop()
    }

    func start(every: TimeAmount) {
        loop.execute {
            self.task = self.loop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in self.poll() }
        }
    }

    func stop() {
        loop.execute {
            self.task?.cancel()
            self.task = nil
        }
    }

    private func poll() {
        guard task != nil else { return }
        polls += 1
        guard let all = try? Interfaces.addresses() else { return }
        let present = all.contains { names.contains($0.device.name) && $0.address == primary }
        if !present && !primaryMissing { sink.write(DaemonEvent.primaryAddressGone(address: primary, interfaces: names)) }
        primaryMissing = !present
        guard let now = try? Interfaces.otherAddresses(on: names, family: family, excluding: primary), now != last else {
            return
        }
        last = now
        sink.write(DaemonEvent.aliasesChanged(aliases: now))
        driver.interfacesChanged(now.map { Alias($0, source: source) })
    }
}
