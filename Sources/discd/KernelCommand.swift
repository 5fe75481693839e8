import ArgumentParser
import Cluster
import Glibc

/// `discd kernel [status|attach|detach]`: the daemon's link to the kernel modules (kernel/README.md).
/// `detach` makes the daemon let go of /dev/heartbeat, so that the modules can be unloaded while it
/// runs (kernel/unload.sh does this); `attach` takes it again. Prints the link's state as one JSON
/// object; exits 1 if the daemon refused.
struct KernelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd kernel",
        abstract: "Show, attach or detach the daemon's link to the kernel modules (heartbeat, fdmod).",
        discussion: """
            status (the default) prints the link's state: attached, absent (module not loaded), \
            detached, refused or off (--no-kernel), with its counters. detach lets go of /dev/heartbeat \
            so that the modules can be unloaded under a running daemon; attach takes it again. attach \
            and detach need root.
            """)

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case status, attach, detach
    }

    @Argument(help: "status, attach or detach.")
    var action: Action = .status

    @Option(help: "The daemon's control socket.")
    var control = defaultControlPath

    func run() async throws {
        let fd = try ControlClient.connect(control)
        defer { close(fd) }
        var req: [(String, JSON.Value)] = [("op", .scalar(.string("kernel")))]
        if action != .status { req.append(("attach", .scalar(.bool(action == .attach)))) }
        guard ControlClient.writeAll(fd, Array((JSON.render(.object(req)) + "\n").utf8)) else {
            throw ConfigError("cannot write to \(control): \(errnoText())")
        }
        var reader = LineReader(fd: fd)
        guard let reply = reader.line(timeoutMillis: 5000) else { throw ConfigError("no answer from the daemon at \(control)") }
        ControlClient.emit(reply)
        guard reply.hasPrefix("{\"ok\":true") else { throw ExitCode(1) }
    }
}
