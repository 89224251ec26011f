// Android only: where downloaded models belong.
package dev.edgecascade

import android.content.Context
import java.io.File

/**
 * The folder for downloaded models on Android: `noBackupFilesDir/models`, which Auto Backup
 * and device-to-device transfer never copy (models are large and can be downloaded again).
 * Created if missing. Pass paths inside it as `dest` to [Models.pull].
 */
fun Models.folder(context: Context): File =
    File(context.noBackupFilesDir, "models").apply { mkdirs() }
