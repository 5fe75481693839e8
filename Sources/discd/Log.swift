import CSystemd
import Cluster
import Glibc
import Logging
import Synchronization

/// Where log lines go and how verbose: stderr with `-n`, the journal (or syslog) as a daemon.
/// SIGUSR1 flips `debug` on a running daemon; the flag is read by every log call.
final class LogSink: Sendable {
    enum Target: Sendable { case stderr, journal, syslog }
    let target: Target
    let startNanos: UInt64
    private let debugOn: Atomic<Bool>

    init(target: Target, debug: Bool, startNanos: UInt64) {
        self.target = target
        self.debugOn = Atomic(debug)
        self.startNanos = startNanos
        if target == .syslog { openlog(strdup("discd"), LOG_PID | LOG_NDELAY, LOG_DAEMON) }
    }

    var debug: Bool { debugOn.load(ordering: .relaxed) }

    /// Flips debug logging; returns the new setting.
    func toggleDebug() -> Bool {
        let new = !debugOn.load(ordering: .relaxed)
        debugOn.store(new, ordering: .relaxed)
        return new
    }

    func enabled(_ level: LogLevel) -> Bool { level > .debug || debug }

    func write(_ level: LogLevel, _ message: String) {
        guard enabled(level) else { return }
        switch target {
        case .stderr:
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let now = UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
            let rel = Double(now &- startNanos) / 1e9
            let line = "+\(fixed3(rel))s \(level): \(message)\n"
            writeStderr(line)
        case .journal:
            _ = discd_journal_print(priority(level), message, "discd")
        case .syslog:
            message.withCString { p in withVaList([p]) { vsyslog(priority(level), "%s", $0) } }
        }
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

func fixed3(_ v: Double) -> String {
    let ms = Int((v * 1000).rounded())
    let frac = ms % 1000
    return "\(ms / 1000)." + (frac < 10 ? "00" : frac < 100 ? "0" : "") + "\(frac)"
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
        sink.write(l, "\(message)")
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
