import ArgumentParser
import Cluster
import Glibc

/// `discd events`: follows the running daemon's event stream through its control socket, with
/// FTB_Subscribe-like filters; resumes after `--since SEQ` (or is told, by a HISTORY_LOST line,
/// what it cannot have).
struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd events",
        abstract: "Follow the daemon's event stream (membership, process and configuration events).",
        discussion: """
            Prints one event per line (JSON objects with --json: seq, epoch, time_unix_ms, space, name, \
            severity, node, node_id, payload). The first line acknowledges the subscription with the \
            daemon's epoch and last sequence number. A subscriber that resumes with --since SEQ gets every \
            later event still in the daemon's history (\(EventHub.historyCapacity) events), or a \
            HISTORY_LOST marker naming what it missed. A subscriber too slow to keep up gets a DROPPED \
            marker with the count. See docs/EVENTS.md.
            """)

    @Option(help: "The daemon's control socket.")
    var control = defaultControlPath

    @Flag(help: "JSON lines instead of text.")
    var json = false

    @Option(name: .customLong("space"), help: "Only this space (repeatable): discd.membership, discd.process, discd.config.")
    var spaces: [String] = []

    @Option(name: .customLong("name"), help: "Only events of this name (repeatable), e.g. NODE_DEAD.")
    var names: [String] = []

    @Option(help: "Least severity: INFO, WARNING, ERROR or FATAL.")
    var severity: String?

    @Option(help: "Resume after this sequence number.")
    var since: UInt64?

    @Option(help: "Exit after this many events (markers and the acknowledgement not counted).")
    var count: Int?

    func validate() throws {
        for s in spaces where EventSpace(rawValue: s) == nil {
            throw ValidationError("--space \(s) is not one of \(EventSpace.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let s = severity, Severity(text: s) == nil { throw ValidationError("--severity must be INFO, WARNING, ERROR or FATAL") }
        if let c = count, c < 1 { throw ValidationError("--count must be at least 1") }
    }

    func run() async throws {
        var req: [(String, JSON.Value)] = [("op", .string("subscribe")), ("format", .string(json ? "json" : "text"))]
        if !spaces.isEmpty { req.append(("spaces", .array(spaces.map { .string($0) }))) }
        if !names.isEmpty { req.append(("names", .array(names.map { .string($0) }))) }
        if let s = severity { req.append(("severity", .string(s.uppercased()))) }
        if let s = since { req.append(("since", .uint(s))) }
        let fd = try ControlClient.connect(control)
        defer { close(fd) }
        let line = JSON.render(.object(req)) + "\n"
        guard ControlClient.writeAll(fd, Array(line.utf8)) else { throw ConfigError("cannot write to \(control): \(errnoText())") }

        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        var first = true
        var seen = 0
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw ConfigError("the daemon closed the event stream") }
            buffer += chunk[0..<n]
            while let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let l = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                if first {
                    first = false
                    guard l.hasPrefix("{\"ok\":true") else { throw ConfigError("the daemon refused the subscription: \(l)") }
                    if json { ControlClient.emit(l) }
                    continue
                }
                let marker = l.hasPrefix("{\"marker\"")
                ControlClient.emit(marker && !json ? "# " + l : l)
                if !marker {
                    seen += 1
                    if let c = count, seen >= c { return }
                }
            }
        }
    }
}

/// The client side of the control socket, shared by `discd events` and `discd watch`.
enum ControlClient {
    static func emit(_ line: String) {
        let b = Array((line + "\n").utf8)
        _ = writeAll(STDOUT_FILENO, b)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            off += n
        }
        return true
    }

    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ConfigError("socket: \(errnoText())") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let p = Array(path.utf8)
        guard p.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw ConfigError("control socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, c) in p.enumerated() { raw[i] = c }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errnoText()
            close(fd)
            throw ConfigError("cannot connect to \(path): \(e) (is discd running with --control \(path)?)")
        }
        return fd
    }
}
