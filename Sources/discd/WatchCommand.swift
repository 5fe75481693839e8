import ArgumentParser
import CLinux
import Cluster
import Glibc

/// `discd watch`: opt a process in to cluster-wide exit notices (docs/EVENTS.md, "Watching
/// processes"). `discd watch [--tag T] -- CMD ARGS...` runs CMD, watched, and exits with its status
/// (128 + the signal if a signal killed it); `discd watch --pid PID [--tag T]` watches a running
/// process and returns at once.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd watch",
        abstract: "Watch a process: its exit is known on every node at once (PROC_EXIT).",
        discussion: """
            With -- CMD ARGS, runs CMD watched and exits with its exit status (128 + signal number \
            when a signal ended it). With --pid, watches a running process and returns. Only root may \
            watch another user's process. The exit reaches every node's event stream (discd events) as \
            PROC_EXIT with this node, the pid, the tag and the exit code or signal.
            """)

    @Option(help: "The daemon's control socket.")
    var control = defaultControlPath

    @Option(help: "Watch tag (0-65535) that names the process in the exit notice.")
    var tag: Int = 0

    @Option(help: "Watch this running process instead of starting one.")
    var pid: Int32?

    @Argument(parsing: .postTerminator, help: "The command to run, watched.")
    var command: [String] = []

    func validate() throws {
        guard (0...65535).contains(tag) else { throw ValidationError("--tag \(tag) is not in 0-65535") }
        if pid != nil && !command.isEmpty { throw ValidationError("give either --pid or -- CMD, not both") }
        if pid == nil && command.isEmpty { throw ValidationError("give --pid PID or -- CMD ARGS...") }
        if let p = pid, p < 1 { throw ValidationError("--pid \(p) is not a process ID") }
    }

    func run() async throws {
        let fd = try ControlClient.connect(control)
        defer { close(fd) }
        var reader = LineReader(fd: fd)
        if let p = pid {
            let reply = try request(fd, &reader, pid: p, notify: false)
            ControlClient.emit(reply)
            return
        }
        // Run the command, watched; keep it unreaped until the daemon has its exit status.
        let child = try Self.spawn(command)
        do {
            _ = try request(fd, &reader, pid: child, notify: true)
        } catch {
            kill(child, SIGKILL)
            _ = Self.reap(child)
            throw error
        }
        let status = discd_wait_exit_nowait(child)
        // The daemon reads the zombie's status, then says so; bounded wait in case it is gone.
        _ = reader.line(timeoutMillis: 5000)
        let final = Self.reap(child)
        let s = final >= 0 ? final : status
        if s & 0x7F == 0 { Glibc.exit((s >> 8) & 0xFF) }
        Glibc.exit(128 + (s & 0x7F))
    }

    private func request(_ fd: Int32, _ reader: inout LineReader, pid: Int32, notify: Bool) throws -> String {
        let req = JSON.render(
            .object([("op", .string("watch")), ("pid", .int(Int64(pid))), ("tag", .int(Int64(tag))), ("notify", .bool(notify))]))
        guard ControlClient.writeAll(fd, Array((req + "\n").utf8)) else { throw ConfigError("cannot write to \(control): \(errnoText())") }
        guard let reply = reader.line(timeoutMillis: 10_000) else { throw ConfigError("no answer from the daemon at \(control)") }
        guard reply.hasPrefix("{\"ok\":true") else {
            let msg = reply.split(separator: "\"error\":").last.map { String($0.dropFirst().dropLast(2)) } ?? reply
            throw ConfigError("the daemon refused to watch process \(pid): \(msg)")
        }
        return reply
    }

    static func spawn(_ argv: [String]) throws -> Int32 {
        var pid: pid_t = 0
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        let rc = posix_spawnp(&pid, argv[0], nil, nil, &cargs, environ)
        guard rc == 0 else { throw ConfigError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        return pid
    }

    static func reap(_ pid: Int32) -> Int32 {
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return st
    }
}

/// Lines from a socket, with a bounded wait for each.
struct LineReader {
    let fd: Int32
    var buffer: [UInt8] = []

    mutating func line(timeoutMillis: Int32) -> String? {
        var waited: Int32 = 0
        while true {
            if let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let l = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return l
            }
            guard waited < timeoutMillis else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, 100)
            waited += 100
            if n <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let r = read(fd, &chunk, chunk.count)
            if r < 0, errno == EINTR { continue }
            guard r > 0 else { return nil }
            buffer += chunk[0..<r]
        }
    }
}
