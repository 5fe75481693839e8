import CLinux
import ControlProtocol
import Cluster
import Glibc
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The event stream's publisher: numbers what the node publishes, keeps the bounded history and
/// writes to the subscribers. Everything on the node's loop.
final class EventHub: @unchecked Sendable {
    /// Events kept for subscribers that reconnect with `--since` (docs/EVENTS.md).
    static let historyCapacity = 4096
    let loop: EventLoop
    private(set) var history: EventHistory
    private var subscribers: [ObjectIdentifier: Subscriber] = [:]
    /// Events a subscriber could not take (its socket buffer full), over all subscribers.
    private(set) var dropped = 0
    /// Event hooks (`--hook`), fed every published event.
    var hooks: HookRunner?

    init(loop: EventLoop, epoch: UInt64) {
        self.loop = loop
        self.history = EventHistory(capacity: Self.historyCapacity, epoch: epoch)
    }

    var subscriberCount: Int { subscribers.count }

    static func nowUnixMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// Publishes a cluster event if the stream carries it.
    func publish(_ e: ClusterEvent) {
        guard let item = StreamMapping.item(for: e) else { return }
        publish(item)
    }

    func publish(_ item: StreamItem) {
        let ev = history.append(item, timeUnixMillis: Self.nowUnixMillis())
        for s in subscribers.values where s.filter.matches(ev) { s.send(ev) }
        for s in subscribers.values { s.flush() }
        hooks?.offer(ev)
    }

    /// A new subscriber: the acknowledgement, what it missed since `since` (or a marker saying what
    /// it cannot have), then the live stream.
    func subscribe(_ s: Subscriber, since: UInt64?) {
        subscribers[ObjectIdentifier(s)] = s
        s.send(
            JSON.render(
                .object([
                    ("ok", .bool(true)), ("op", .string("subscribe")), ("epoch", .uint(history.epoch)),
                    ("last_seq", .uint(history.lastSeq)), ("history", .int(Int64(history.capacity))),
                ])))
        if let since {
            let (gap, events) = history.since(since)
            switch gap {
            case .evicted(let from, let to)?:
                s.send(Self.marker("HISTORY_LOST", [("missed_from", .uint(from)), ("missed_to", .uint(to)), ("reason", .string("evicted"))]))
            case .restarted(let last)?:
                s.send(
                    Self.marker(
                        "HISTORY_LOST",
                        [("since", .uint(since)), ("last_seq", .uint(last)), ("reason", .string("daemon_restarted"))]))
            case nil:
                break
            }
            for ev in events where s.filter.matches(ev) { s.send(ev) }
        }
        s.flush()
    }

    func unsubscribe(_ s: Subscriber) {
        subscribers[ObjectIdentifier(s)] = nil
    }

    func noteDropped(_ n: Int) { dropped += n }

    static func marker(_ name: String, _ fields: [(String, FieldValue)]) -> String {
        JSON.render(.object([("marker", .string(name))] + fields.map { ($0.0, .scalar($0.1)) }))
    }
}

/// One subscriber's connection: events are written while the socket takes them; while it does not
/// (a slow or stalled reader), they are dropped and counted, and a `DROPPED` marker with the count
/// is written once it drains. Heartbeats never wait for a subscriber.
final class Subscriber: @unchecked Sendable {
    let channel: Channel
    let filter: EventFilter
    /// Text lines for people instead of JSON (`discd events` without `--json`).
    let text: Bool
    let hub: EventHub
    private var droppedSinceMarker = 0
    private var pending = false

    init(channel: Channel, filter: EventFilter, text: Bool, hub: EventHub) {
        self.channel = channel
        self.filter = filter
        self.text = text
        self.hub = hub
    }

    func send(_ e: StreamEvent) { send(text ? e.text : e.jsonLine) }

    func send(_ line: String) {
        guard channel.isWritable else {
            droppedSinceMarker += 1
            hub.noteDropped(1)
            return
        }
        if droppedSinceMarker > 0 {
            write(EventHub.marker("DROPPED", [("count", .int(Int64(droppedSinceMarker)))]))
            droppedSinceMarker = 0
        }
        write(line)
    }

    private func write(_ line: String) {
        var buf = channel.allocator.buffer(capacity: line.utf8.count + 1)
        buf.writeString(line)
        buf.writeInteger(UInt8(ascii: "\n"))
        channel.write(buf, promise: nil)
        pending = true
    }

    func flush() {
        if pending {
            channel.flush()
            pending = false
        }
    }

    func writable() {
        if droppedSinceMarker > 0, channel.isWritable {
            write(EventHub.marker("DROPPED", [("count", .int(Int64(droppedSinceMarker)))]))
            droppedSinceMarker = 0
            flush()
        }
    }
}

/// The control socket (`--control PATH`, a Unix stream socket): subscriptions to the event stream
/// today (docs/EVENTS.md). A malformed or oversized request gets an error line and the connection is
/// closed; it is counted and never reaches the node.
final class ControlServer: Service, @unchecked Sendable {
    let path: String
    let loop: EventLoop
    let hub: EventHub
    let watcher: ProcessWatcher
    let kernel: KernelLink?
    let sink: LogSink
    private(set) var badRequests = 0
    private var channel: Channel?

    init(path: String, loop: EventLoop, hub: EventHub, watcher: ProcessWatcher, kernel: KernelLink? = nil, sink: LogSink) {
        self.path = path
        self.loop = loop
        self.hub = hub
        self.watcher = watcher
        self.kernel = kernel
        self.sink = sink
    }

    /// Binds before the daemon reports ready, so that a client started after `discd` returns finds it.
    func bind() async throws {
        do {
            channel = try await ServerBootstrap(group: loop)
                .serverChannelOption(.backlog, value: 64)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 256 * 1024))
                .childChannelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHandler(ControlHandler(server: self))
                    }
                }
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            chmod(path, 0o666)
            watcher.start()
        } catch {
            throw ConfigError("cannot listen on control socket \(path): \(describe(error))")
        }
    }

    func run() async throws {
        try? await gracefulShutdown()
        try? await channel?.close().get()
        unlink(path)
        await watcher.stop()
        await hub.hooks?.shutdown()
    }

    func refused(_ reason: String) {
        badRequests += 1
        sink.write(DaemonEvent.controlRequestRefused(reason: reason, total: badRequests))
    }
}

final class ControlHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let server: ControlServer
    private var buffered: [UInt8] = []
    private var subscriber: Subscriber?

    init(server: ControlServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buf = unwrapInboundIn(data)
        guard subscriber == nil else { return }  // a subscriber only reads; later input is ignored
        buffered += buf.readBytes(length: buf.readableBytes) ?? []
        guard let nl = buffered.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffered.count > ControlRequest.maxLine { refuse(context, "request longer than \(ControlRequest.maxLine) bytes") }
            return
        }
        guard nl <= ControlRequest.maxLine else {
            refuse(context, "request longer than \(ControlRequest.maxLine) bytes")
            return
        }
        let line = String(decoding: buffered[..<nl], as: UTF8.self)
        buffered.removeAll()
        do {
            switch try ControlRequest.parse(line) {
            case .subscribe(let filter, let since, let text):
                let s = Subscriber(channel: context.channel, filter: filter, text: text, hub: server.hub)
                subscriber = s
                server.hub.subscribe(s, since: since)
            case .watch(let pid, let tag, let notify):
                watch(context, pid: pid, tag: tag, notify: notify)
            case .kernel(let attach):
                kernel(context, attach: attach)
            }
        } catch {
            refuse(context, error.reason)
        }
    }

    /// Permission by SO_PEERCRED: the caller's uid must own the process, unless it is root.
    private func watch(_ context: ChannelHandlerContext, pid: Int32, tag: UInt16, notify: Bool) {
        guard let uid = Self.peerUID(context.channel) else {
            refuse(context, "cannot read the caller's credentials")
            return
        }
        let ch = context.channel
        var n: (@Sendable (Int32) -> Void)?
        if notify {
            n = { status in
                let line = JSON.render(.object([("exited", .int(Int64(pid))), ("status", .int(Int64(status)))])) + "\n"
                ch.writeAndFlush(ch.allocator.buffer(string: line), promise: nil)
            }
        }
        switch server.watcher.watch(pid: pid, tag: tag, callerUID: uid, notify: n) {
        case .success(let w):
            server.sink.write(DaemonEvent.watching(pid: w.pid, tag: w.tag, name: w.name))
            reply(
                context,
                [("ok", .bool(true)), ("op", .string("watch")), ("pid", .int(Int64(w.pid))), ("tag", .int(Int64(w.tag))),
                 ("name", .string(w.name)), ("start_time", .uint(w.startTime))], close: !notify)
        case .failure(let r):
            server.sink.write(DaemonEvent.watchRefused(pid: pid, uid: uid, reason: r.description))
            reply(context, [("ok", .bool(false)), ("error", .string(r.description))], close: true)
        }
        buffered.removeAll()
    }

    private func kernel(_ context: ChannelHandlerContext, attach: Bool?) {
        buffered.removeAll()
        guard let link = server.kernel else {
            reply(context, [("ok", .bool(false)), ("error", .string("no kernel link"))], close: true)
            return
        }
        func answer(_ context: ChannelHandlerContext) {
            var f = EventFields()
            link.fields(into: &f)
            reply(context, [("ok", .bool(true)), ("op", .string("kernel"))] + f.items.map { ($0.0, .scalar($0.1)) }, close: true)
        }
        guard let attach else { return answer(context) }
        guard Self.peerUID(context.channel) == 0 else {
            refuse(context, "only root may attach or detach the kernel modules")
            return
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        link.setAttached(attach).hop(to: context.eventLoop).whenComplete { _ in answer(loopBound.value) }
    }

    private func reply(_ context: ChannelHandlerContext, _ fields: [(String, JSON.Value)], close: Bool) {
        var out = context.channel.allocator.buffer(capacity: 128)
        out.writeString(JSON.render(.object(fields)) + "\n")
        let ch = context.channel
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in if close { ch.close(promise: nil) } }
    }

    static func peerUID(_ ch: Channel) -> UInt32? {
        guard let p = ch as? SocketOptionProvider else { return nil }
        let f: EventLoopFuture<discd_ucred> = p.unsafeGetSocketOption(level: .socket, name: .init(rawValue: SO_PEERCRED))
        var uid: UInt32?
        f.whenSuccess { uid = $0.uid }
        return uid
    }

    private func refuse(_ context: ChannelHandlerContext, _ reason: String) {
        server.refused(reason)
        var out = context.channel.allocator.buffer(capacity: 128)
        out.writeString(JSON.render(.object([("ok", .bool(false)), ("error", .string(reason))])) + "\n")
        let ch = context.channel
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in ch.close(promise: nil) }
        buffered.removeAll()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        subscriber?.writable()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let s = subscriber { server.hub.unsubscribe(s) }
        subscriber = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

extension ControlHandler {
    typealias OutboundOut = ByteBuffer
}
