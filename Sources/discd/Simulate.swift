import ArgumentParser

struct SimulateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discd simulate", abstract: "Simulate a cluster in virtual time (capacity planning).")
    func run() async throws {
        throw ValidationError("the simulator is not built yet")
    }
}
