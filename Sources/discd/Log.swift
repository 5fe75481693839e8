import CSystemd
import Cluster
import Glibc
import Logging
import Synchronization

/// Where events and log lines go and how: stderr with `-n` (text, or JSON lines with
/// `--log-format json`), the journal (with the event's fields as journal fields) or syslog as a
/// daemon. SIGUSR1 flips `debug` on a running daemon. Nothing is formatted for a disabled level.
final class LogSink: Sendable {
    enum Target: Sendable { case stderr, journal, syslog }
    enum Format: String, Sendable, CaseIterable { case text, json }
    let target: Target
    let format: Format
    let startNanos: UInt64
    private let debugOn: Atomic<Bool>
    /// Told of every daemon event that is also a `discd.config` stream event (the event hub).
    private let configObserver = Mutex<(@Sendable (StreamItem) -> Void)?>(nil)

    init(target: Target, format: Format, debug: Bool, startNanos: UInt64) {
        self.target = target
        self.format = format
        self.debugOn = Atomic(debug)
        self.startNanos = startNanos
        if target == .syslog { openlog(strdup("discd"), LOG_PID | LOG_NDELAY, LOG_DAEMON) }
    }

    var debug: Bool { debugOn.load(ordering: .relaxed) }
    var level: LogLevel { debug ? .debug : .info }

    /// Flips debug logging; returns the new setting.
    func toggleDebug() -> Bool {
        let new = !debugOn.load(ordering: .relaxed)
        debugOn.store(new, ordering: .relaxed)
        return new
    }

    func enabled(_ level: LogLevel) -> Bool { level >= self.level }

    private func sinceStart() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return (UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)) &- startNanos
    }

    func observeConfig(_ f: @escaping @Sendable (StreamItem) -> Void) {
        configObserver.withLock { $0 = f }
    }

    /// Writes one event (if its level is enabled); configuration changes also go to the stream.
    func write(_ e: some Event) {
        if let d = e as? DaemonEvent, let item = d.streamItem, let o = configObserver.withLock({ $0 }) { o(item) }
        guard enabled(e.level) else { return }
        let t = sinceStart()
        switch target {
        case .stderr:
            writeStderr(format == .json ? e.jsonLine(sinceStart: t) + "\n" : textLine(e.level, e.text, t))
        case .journal:
            var f = EventFields()
            e.fields(into: &f)
            var items = [
                "MESSAGE=" + (format == .json ? e.jsonLine(sinceStart: t) : e.text),
                "PRIORITY=\(priority(e.level))", "SYSLOG_IDENTIFIER=discd", "DISCD_EVENT=\(e.name)",
            ]
            for (k, v) in f.items {
                let value: String =
                    switch v {
                    case .string(let s): s
                    default: JSON.value(v)
                    }
                items.append("DISCD_" + k.uppercased() + "=" + value)
            }
            journal(items)
        case .syslog:
            syslogLine(e.level, format == .json ? e.jsonLine(sinceStart: t) : e.text)
        }
    }

    private func textLine(_ level: LogLevel, _ message: String, _ t: UInt64) -> String {
        "+\(JSON.fixed(Double(t) / 1e9, digits: 3))s \(level): \(message)\n"
    }

    private func journal(_ items: [String]) {
        let cstrs = items.map { strdup($0)! }
        defer { cstrs.forEach { free($0) } }
        var iov = cstrs.map { iovec(iov_base: UnsafeMutableRawPointer($0), iov_len: strlen($0)) }
        _ = iov.withUnsafeMutableBufferPointer { discd_journal_sendv($0.baseAddress, Int32($0.count)) }
    }

    private func syslogLine(_ level: LogLevel, _ message: String) {
        message.withCString { p in withVaList([p]) { vsyslog(priority(level), "%s", $0) } }
    }

    private func priority(_ l: LogLevel) -> Int32 {
        switch l {
        case .debug: LOG_DEBUG
        case .info: LOG_INFO
        case .notice: LOG_NOTICE
        case .warning: LOG_WARNING
        case .error: LOG_ERR
        }
    }
}

/// swift-log handler over the sink, so library code logging through swift-log lands in the same place.
struct SinkLogHandler: LogHandler {
    let sink: LogSink
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level {
        get { sink.debug ? .debug : .info }
        set {}
    }
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        let l: LogLevel =
            switch level {
            case .trace, .debug: .debug
            case .info: .info
            case .notice: .notice
            case .warning: .warning
            case .error, .critical: .error
            }
        sink.write(DaemonEvent.library(level: l, source: source, message: "\(message)"))
    }
}

/// Writes a whole line to fd 2 in one call (lines from several threads do not interleave).
func writeStderr(_ s: String) {
    var bytes = Array(s.utf8)
    var off = 0
    while off < bytes.count {
        let n = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + off, $0.count - off) }
        if n <= 0 { break }
        off += n
    }
}
