// The device state the router uses, and an opt-in monitor that keeps it current on iOS.
// Not compiled on our CI (no Swift toolchain): scripts/check-swift.sh parses it (README).
import EdgeCascadeBindings
import Foundation

/// How hot the device is: nominal, fair, serious, critical.
public typealias Thermal = EdgeCascadeBindings.Thermal
/// The network the device is on: unmetered, metered, none. (Not `Network`, which would shadow
/// Apple's Network framework.)
public typealias DeviceNetwork = EdgeCascadeBindings.Network

/// What the app reports about the device, through `EdgeCascade.setDeviceState` or a
/// `DeviceMonitor`. Offline keeps everything local; in the background requests go to the
/// remote tier (private ones stay local, and are refused if the model runs on the GPU, which
/// iOS forbids in the background); serious heat, Low Power Mode and a low battery escalate more
/// readily; a metered (expensive or constrained) network less. The defaults change nothing.
public struct DeviceState: Sendable, Equatable {
    public var thermal: Thermal
    /// Battery charge, 0 to 1; nil when unknown.
    public var battery: Double?
    public var charging: Bool
    /// Low Power Mode.
    public var lowPower: Bool
    public var network: DeviceNetwork
    public var background: Bool

    public init(
        thermal: Thermal = .nominal,
        battery: Double? = nil,
        charging: Bool = false,
        lowPower: Bool = false,
        network: DeviceNetwork = .unmetered,
        background: Bool = false
    ) {
        self.thermal = thermal
        self.battery = battery
        self.charging = charging
        self.lowPower = lowPower
        self.network = network
        self.background = background
    }

    init(_ s: EdgeCascadeBindings.DeviceState) {
        self.init(
            thermal: s.thermal,
            battery: s.battery,
            charging: s.charging,
            lowPower: s.lowPower,
            network: s.network,
            background: s.background
        )
    }

    func toFfi() -> EdgeCascadeBindings.DeviceState {
        EdgeCascadeBindings.DeviceState(
            thermal: thermal,
            battery: battery,
            charging: charging,
            lowPower: lowPower,
            network: network,
            background: background
        )
    }

    /// `ProcessInfo.ThermalState` in the router's terms.
    public static func thermal(_ state: ProcessInfo.ThermalState) -> Thermal {
        switch state {
        case .nominal: return .nominal
        case .fair: return .fair
        case .serious: return .serious
        case .critical: return .critical
        @unknown default: return .serious
        }
    }
}

#if canImport(UIKit) && canImport(Network)
import Network
import UIKit

/// Keeps an `EdgeCascade`'s device state current: `ProcessInfo.thermalState` and
/// `isLowPowerModeEnabled`, `UIDevice` battery level and state, `NWPathMonitor` (no path is
/// offline; an expensive or constrained one is metered), and the app entering the background
/// or foreground; memory warnings call `trimMemory()`. SwiftUI apps may also call
/// `setBackground(scenePhase == .background)`.
///
/// ```
/// let monitor = DeviceMonitor(ai)
/// monitor.start()   // on the main actor
/// ```
public final class DeviceMonitor: @unchecked Sendable {
    private let target: EdgeCascade
    private let lock = NSLock()
    private var state = DeviceState()
    private var observers: [NSObjectProtocol] = []
    private var path: NWPathMonitor?

    public init(_ target: EdgeCascade) {
        self.target = target
    }

    /// Reads the current state, then follows its changes. Idempotent.
    @MainActor
    public func start() {
        if lock.sync({ path != nil }) { return }
        UIDevice.current.isBatteryMonitoringEnabled = true
        let process = ProcessInfo.processInfo
        let background = UIApplication.shared.applicationState == .background
        let battery = Self.battery(UIDevice.current)
        update {
            $0.thermal = DeviceState.thermal(process.thermalState)
            $0.lowPower = process.isLowPowerModeEnabled
            $0.battery = battery.level
            $0.charging = battery.charging
            $0.background = background
        }
        let center = NotificationCenter.default
        let main = OperationQueue.main
        var tokens: [NSObjectProtocol] = []
        tokens.append(center.addObserver(forName: ProcessInfo.thermalStateDidChangeNotification, object: nil, queue: main) { [weak self] _ in
            self?.update { $0.thermal = DeviceState.thermal(ProcessInfo.processInfo.thermalState) }
        })
        tokens.append(center.addObserver(forName: Notification.Name.NSProcessInfoPowerStateDidChange, object: nil, queue: main) { [weak self] _ in
            self?.update { $0.lowPower = ProcessInfo.processInfo.isLowPowerModeEnabled }
        })
        for name in [UIDevice.batteryLevelDidChangeNotification, UIDevice.batteryStateDidChangeNotification] {
            tokens.append(center.addObserver(forName: name, object: nil, queue: main) { [weak self] _ in
                let battery = MainActor.assumeIsolated { Self.battery(UIDevice.current) }
                self?.update {
                    $0.battery = battery.level
                    $0.charging = battery.charging
                }
            })
        }
        tokens.append(center.addObserver(forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: main) { [weak self] _ in
            self?.setBackground(true)
        })
        tokens.append(center.addObserver(forName: UIApplication.willEnterForegroundNotification, object: nil, queue: main) { [weak self] _ in
            self?.setBackground(false)
        })
        // Memory warnings: give the runtime's caches and idle contexts back before iOS ends the app.
        tokens.append(center.addObserver(forName: UIApplication.didReceiveMemoryWarningNotification, object: nil, queue: main) { [weak self] _ in
            self?.target.trimMemory()
        })
        let monitor = NWPathMonitor()
        monitor.pathUpdateHandler = { [weak self] p in
            let network: DeviceNetwork
            if p.status != .satisfied {
                network = DeviceNetwork.none
            } else if p.isExpensive || p.isConstrained {
                network = DeviceNetwork.metered
            } else {
                network = DeviceNetwork.unmetered
            }
            self?.update { $0.network = network }
        }
        monitor.start(queue: DispatchQueue(label: "dev.edgecascade.path"))
        lock.sync {
            observers = tokens
            path = monitor
        }
    }

    /// For apps that track the scene phase themselves.
    public func setBackground(_ background: Bool) {
        update { $0.background = background }
    }

    /// Stops following changes; the last state stays with the runtime. Idempotent.
    public func stop() {
        let (tokens, monitor): ([NSObjectProtocol], NWPathMonitor?) = lock.sync {
            defer {
                observers = []
                path = nil
            }
            return (observers, path)
        }
        tokens.forEach { NotificationCenter.default.removeObserver($0) }
        monitor?.cancel()
    }

    deinit {
        stop()
    }

    private func update(_ change: (inout DeviceState) -> Void) {
        let next: DeviceState = lock.sync {
            change(&state)
            return state
        }
        // A closed runtime has nothing left to tell.
        try? target.setDeviceState(next)
    }

    @MainActor
    private static func battery(_ device: UIDevice) -> (level: Double?, charging: Bool) {
        let level = device.batteryLevel < 0 ? nil : Double(device.batteryLevel)
        let charging = device.batteryState == .charging || device.batteryState == .full
        return (level, charging)
    }
}
#endif
