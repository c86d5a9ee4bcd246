import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix

/// systemd's service watchdog (`WatchdogSec=` in the unit): WATCHDOG=1 every half period,
/// but only once every event loop of the group has run a task since the last one. A loop
/// that is stuck (a blocking call, a livelock) stops the pings, so systemd aborts and
/// restarts the process; the restarted attach takes the device over and the mount stays.
/// The timer runs on a thread of its own (a one-thread event loop group), so a stuck loop
/// cannot ping for itself. (Not a dispatch queue: under the unit's sandbox libdispatch's
/// worker threads log "Failed to set thread priority" each time one starts.)
public final class SystemdWatchdog {
  private let timerGroup: MultiThreadedEventLoopGroup
  private let task: RepeatedTask

  /// Half of `$WATCHDOG_USEC` when systemd watches this process ($WATCHDOG_PID unset or
  /// ours), else nil.
  public static func period(environment: [String: String] = ProcessInfo.processInfo.environment) -> TimeAmount? {
    guard let text = environment["WATCHDOG_USEC"], let usec = Int64(text), usec > 0 else { return nil }
    if let pid = environment["WATCHDOG_PID"], Int32(pid) != getpid() { return nil }
    return .microseconds(max(usec / 2, 1))
  }

  /// Starts pinging when systemd asked for it; nil otherwise.
  public static func start(group: MultiThreadedEventLoopGroup = .singleton) -> SystemdWatchdog? {
    guard let period = period() else { return nil }
    return SystemdWatchdog(group: group, period: period)
  }

  init(group: MultiThreadedEventLoopGroup, period: TimeAmount) {
    let loops = Array(group.makeIterator())
    timerGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    task = timerGroup.next().scheduleRepeatedTask(initialDelay: .zero, delay: period) { _ in
      let turns = loops.map { $0.submit {} }
      // Pings when every loop has answered; a loop stuck past the next tick leaves this
      // one pending and every later one too, and systemd's deadline passes.
      EventLoopFuture.andAllSucceed(turns, on: loops[0]).whenSuccess {
        SystemdNotify.send("WATCHDOG=1")
      }
    }
  }

  public func stop() {
    task.cancel()
    try? timerGroup.syncShutdownGracefully()
  }
}
