import SyncSystem
