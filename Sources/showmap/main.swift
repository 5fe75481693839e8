// showmap: prints the node map discd writes, as a table, as mosix.map lines or as JSON.
import ArgumentParser
import MapStore
import NodeMap

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

struct ShowMap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "showmap",
        abstract: "Show the node map written by discd.",
        discussion: """
            Exit status: 0 on success, 1 when the map file is missing, unreadable or corrupt, \
            2 on bad usage.
            """)

    @Option(
        name: [.short, .customLong("file")],
        help: ArgumentHelp("Map file to read ('-' reads standard input).", valueName: "FILE"))
    var file = "/run/discd/discd.map"

    @Flag(help: "Print the map as mosix.map lines, exactly what would be handed to setpe.")
    var mosix = false

    @Flag(help: "Print one JSON object for scripts (see docs/MAPFILE.md).")
    var json = false

    @Flag(help: "Show only members (alive and suspect nodes).")
    var members = false

    func validate() throws {
        if mosix && json { throw ValidationError("--mosix and --json cannot be used together.") }
    }

    func run() throws {
        let snapshot: MapSnapshot
        do {
            snapshot = try MapFile.read(path: file)
        } catch {
            fail("\(error)")
        }
        let out: String
        if mosix {
            out = MapRendering.mosix(snapshot, membersOnly: members)
        } else if json {
            out = MapRendering.json(snapshot, nowUnixNanos: wallClockNanos(), membersOnly: members)
        } else {
            out = MapRendering.table(snapshot, nowUnixNanos: wallClockNanos(), membersOnly: members)
        }
        print(out, terminator: "")
    }

    /// Runs the command; usage errors exit with 2 (ArgumentParser's default would be 64).
    static func runMain() -> Never {
        do {
            var command = try parseAsRoot()
            try command.run()
            terminate(0)
        } catch {
            if exitCode(for: error) == .validationFailure {
                writeStderr(fullMessage(for: error) + "\n")
                terminate(2)
            }
            exit(withError: error)
        }
    }
}

func fail(_ message: String) -> Never {
    writeStderr("showmap: \(message)\n")
    terminate(1)
}

func writeStderr(_ s: String) {
    var bytes = Array(s.utf8)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + done, $0.count - done) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return }
        done += n
    }
}

func terminate(_ code: Int32) -> Never {
    fflush(nil)
    exit(code)
}

func wallClockNanos() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

ShowMap.runMain()
